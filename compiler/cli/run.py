"""`tunegen run`: run a recipe with its config and command-line overrides."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunegen.compiler.cli.app import (
    OVERRIDES_HELP,
    Debug,
    Overrides,
    app,
    debug_enabled,
    overrides_of,
    set_debug,
)
from tunegen.runtime.errors import TunegenError

__all__ = ["run"]

RUN_EPILOG = f"""{OVERRIDES_HELP}

\b
Example:
  tunegen run generated/lora.py training.max_steps=50 training.lr=1e-3"""


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=RUN_EPILOG,
)
def run(
    recipe: Annotated[
        Path,
        typer.Argument(metavar="RECIPE", help="A generated (or hand-written) recipe .py file."),
    ],
    overrides: Overrides = None,
    configs: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            show_default=False,
            help="Config file (default: the recipe's .yaml).",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Run a recipe with its config and command-line overrides."""
    set_debug(debug)
    overrides = overrides_of("run", overrides)
    if not recipe.is_file():
        raise TunegenError(f"{recipe}: recipe file not found")
    if configs and len(configs) > 1:  # click would silently take the last one
        raise TunegenError(f"--config is given {len(configs)} times; pass one config file")
    config = configs[0] if configs else recipe.with_suffix(".yaml")
    if not config.is_file():
        raise TunegenError(f"{config}: config file not found (pass --config)")
    argv = ["--config", str(config), *overrides]
    if debug_enabled():
        argv.append("--debug")
    sys.argv = [str(recipe), *argv]
    sys.path.insert(0, str(recipe.resolve().parent))
    runpy.run_path(str(recipe), run_name="__main__")
