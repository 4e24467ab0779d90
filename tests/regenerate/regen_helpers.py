"""Helpers for the regeneration tests: the spec of a scripted history, running `tunegen` in this
process, editing files as a user does."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tunegen.compiler.cli import main

RECIPE = Path("generated/my_recipe.py")
CONFIG = Path("generated/my_recipe.yaml")
META = Path("generated/.tunegen/my_recipe")

SPEC_V1 = """\
# my recipe
name: my_recipe
method: lora
model: tiny
data: {path: data/demo_train.jsonl, max_seq_len: 64}
lora: {rank: 8, alpha: 16}
training:
  max_steps: 3
  batch_size: 2
  lr: 3.0e-4
logging: {every_n_steps: 1}
"""


@dataclass(frozen=True)
class Result:
    """A command's exit status and output."""

    status: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> Result:
    """Run `tunegen ARGS` as the console script does (main() with sys.argv)."""
    capsys.readouterr()
    saved = sys.argv
    sys.argv = ["tunegen", *args]
    status = 0
    try:
        main()
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return Result(status, out, err)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace `old` (which must occur exactly `count` times) by `new` in the file at `path`."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")
