"""Shell completion: Typer's --install-completion / --show-completion, and completing commands."""

from __future__ import annotations

import typer.completion
from helpers import cli_in_process


def test_show_completion_prints_the_bash_script(monkeypatch) -> None:
    # Typer detects the shell from the process tree (shellingham); a test run started without a
    # shell above it (nohup, setsid, some CI runners) has none to find, so name it here.
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    status, out, err = cli_in_process("--show-completion")
    assert status == 0, err
    assert (
        "_tunegen_completion()" in out
        and "complete -o default -F _tunegen_completion tunegen" in out
    )


def test_completes_commands_and_options(monkeypatch) -> None:
    monkeypatch.setenv("_TUNEGEN_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "tunegen ge")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert cli_in_process()[:2] == (0, "generate\n")
    monkeypatch.setenv("COMP_WORDS", "tunegen eval --lm")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert cli_in_process()[1].split() == ["--lm-eval-tasks", "--lm-eval-include"]
