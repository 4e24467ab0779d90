"""Shared fixtures: the repository root and a working directory with the demo data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def demo_workdir(workdir: Path) -> Path:
    """A working directory holding `data/` copied from the built-in specs' data."""
    shutil.copytree(SPECS / "data", workdir / "data")
    return workdir


@pytest.fixture
def write_spec(workdir: Path):
    """Write spec text to a file in the working directory and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = workdir / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
