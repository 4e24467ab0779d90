"""The CLI's help and listings: an example on every command's --help, `tunegen ls` as tables."""

from __future__ import annotations

import pytest
from helpers import cli_in_process

from tunegen.compiler.cli.app import _Commands


@pytest.mark.parametrize("command", _Commands.ORDER)
def test_every_command_help_shows_an_example(command: str) -> None:
    status, out, err = cli_in_process(command, "--help")
    assert status == 0, err
    example = out.split("Example", 1)[1]  # "Example:" or "Examples:"
    assert f"    tunegen {command} " in example or f"    tunegen {command}\n" in example


def test_ls_lists_specs_methods_and_models_as_tables() -> None:
    lines = cli_in_process("ls")[1].splitlines()
    assert lines[1].split() == ["name", "method", "model", "what", "it", "does"]
    lora = next(line for line in lines if line.startswith("  lora "))
    assert lora.split()[:3] == ["lora", "lora", "tiny"]
    assert "  qlora   LoRA on a 4-bit NF4 base" in lines
    assert lines[-2:] == ["  model  parameters", "  tiny   3.1M"]
