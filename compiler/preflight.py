"""`tunegen validate`: check a spec or a generated config without loading any weights.

For a spec: the spec is validated and compiled in memory, and the config it would generate is
checked against the recipe it would generate. For a config: overrides are applied, then every
component, argument, type, file and unread key is checked against the recipe next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from tunegen.compiler.pipeline import compile_spec
from tunegen.runtime.config import apply_overrides, load_config
from tunegen.runtime.config_check import check_config, format_problems
from tunegen.runtime.errors import ConfigError, TunegenError

__all__ = ["check_config_file", "check_spec_file"]


def check_spec_file(path: Path) -> str:
    """Validate the spec at `path` and the config it compiles to; return a one-line summary."""
    compiled = compile_spec(path)
    cfg = OmegaConf.create(compiled.rendered.config)
    problems = check_config(
        cfg, recipe_source=compiled.rendered.recipe, recipe_name=compiled.recipe_path.name
    )
    if problems:  # the compiler produced a config its own recipe rejects: a tunegen bug
        raise TunegenError(format_problems(problems, source=f"{path} (compiled config)"))
    return f"ok: {path} is a valid {compiled.spec.method} spec (would write {compiled.recipe_path})"


def check_config_file(path: Path, overrides: Sequence[str], *, recipe: Path | None = None) -> str:
    """Check the config at `path` with `overrides` applied; return a one-line summary.

    The recipe (by default the `.py` file of the same name next to the config) tells which keys are
    read; without one, that check is skipped and the summary says so.
    """
    cfg = apply_overrides(load_config(path), overrides)
    recipe = recipe or path.with_suffix(".py")
    if recipe.is_file():
        source = recipe.read_text(encoding="utf-8")
    elif recipe == path.with_suffix(".py"):
        source = None
    else:
        raise ConfigError(f"{recipe}: recipe file not found")
    problems = check_config(cfg, recipe_source=source, recipe_name=recipe.name)
    if problems:
        raise ConfigError(format_problems(problems, source=str(path)))
    unread_note = (
        ""
        if source is not None
        else " (no recipe found: unread keys and arguments the recipe passes not checked)"
    )
    return f"ok: {path}{unread_note}"
