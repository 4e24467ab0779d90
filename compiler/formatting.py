"""Post-render pass, part 2: format a generated recipe exactly as `ruff format` does.

ruff runs isolated from any configuration file (a user's pyproject.toml must not change what
tunegen generates) with its default style and line length, the settings a user's own
`ruff format` most likely has, so the generated file stays unchanged when its owner formats it.
"""

from __future__ import annotations

import subprocess

from ruff.__main__ import find_ruff_bin

from tunegen.compiler.output_check import GeneratedCodeError

__all__ = ["RUFF_FORMAT", "format_python"]

# Explicit settings: the output must not depend on the working directory or its config files.
RUFF_FORMAT = ("format", "--isolated", "--line-length", "88", "--stdin-filename", "recipe.py", "-")


def format_python(source: str) -> str:
    """`source` formatted by ruff; raises GeneratedCodeError if ruff cannot format it."""
    result = subprocess.run(
        [find_ruff_bin(), *RUFF_FORMAT],
        input=source,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if result.returncode != 0:
        raise GeneratedCodeError(f"ruff cannot format the generated recipe: {result.stderr}")
    return result.stdout
