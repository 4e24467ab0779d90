"""Helpers for tests that run the `tunegen` command and generated recipes as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TUNEGEN = [sys.executable, "-m", "tunegen.compiler"]


def tunegen(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `tunegen ARGS` and capture its output."""
    return subprocess.run(
        [*TUNEGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_recipe(recipe: str | Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run a generated recipe with its config (the `.yaml` beside it) and `overrides`; the exit
    status must be `expect`."""
    recipe = Path(recipe)
    result = subprocess.run(
        [sys.executable, str(recipe), "--config", str(recipe.with_suffix(".yaml")), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of a metrics file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(path: Path) -> dict[int, float]:
    """step -> loss from a metrics file (training steps only)."""
    return {row["step"]: row["loss"] for row in read_metrics(path) if "loss" in row}
