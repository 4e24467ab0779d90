"""`tunegen update` and `tunegen diff`: regenerate an edited recipe from a changed spec, or show
the edits. The merge itself is the compiler's (`compiler/update.py`, `merge.py`, `config_merge.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug, spec_path
from tunegen.compiler.update import Outcome, resolve, update, user_diff

__all__ = ["diff", "update_recipe"]

Recipe = Annotated[
    Path,
    typer.Argument(metavar="RECIPE", help="The generated recipe, e.g. generated/my_recipe.py."),
]


@app.command(
    "update",
    epilog="\b\nExamples:\n"
    "  tunegen update generated/lora.py              after editing the spec\n"
    "  tunegen update generated/lora.py --dry-run    see what would change first",
)
def update_recipe(
    recipe: Recipe,
    spec: Annotated[
        str | None,
        typer.Option("--spec", "-s", metavar="FILE", help="Regenerate from this spec instead."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change as a diff; write nothing.")
    ] = False,
    resolved: Annotated[
        bool, typer.Option("--resolved", help="The conflicts of the last update are resolved.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Bring a changed spec or a newer tunegen into your edited recipe and config, keeping your edits.

    Exit status 1 when conflicts are left in the files (marked as git marks them).
    """
    set_debug(debug)
    if resolved:
        _finish(resolve(recipe))
    _finish(update(recipe, spec=spec_path(spec) if spec else None, dry_run=dry_run))


@app.command(epilog="\b\nExample:\n  tunegen diff generated/lora.py")
def diff(recipe: Recipe, debug: Debug = False) -> None:
    """Print your edits to the recipe and config against what tunegen generated."""
    set_debug(debug)
    _finish(user_diff(recipe))


def _finish(outcome: Outcome) -> NoReturn:
    """Print what the update or diff says and exit with its status (1: conflicts left)."""
    for line in outcome.out:
        typer.echo(line)
    for line in outcome.err:
        typer.echo(line, err=True)
    raise typer.Exit(outcome.status)
