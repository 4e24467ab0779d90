"""The `cli` fixture: run `tunegen ARGS` in this process (see regen_helpers.run_cli)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from regen_helpers import Result, run_cli


@pytest.fixture
def cli(capsys) -> Callable[..., Result]:
    """Run `tunegen ARGS` as the console script does, capturing its output."""
    return lambda *args: run_cli(capsys, *args)
