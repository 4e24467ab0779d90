"""`tunegen ls`, `tunegen cp` and `tunegen schema`: the built-in specs and the spec's JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunegen.compiler.cli.app import Debug, app, builtin_specs, set_debug
from tunegen.runtime.errors import TunegenError

__all__ = ["copy_builtin", "list_builtins", "print_schema"]


@app.command("ls")
def list_builtins(debug: Debug = False) -> None:
    """List the built-in specs, methods and models."""
    from tunegen.compiler.schema import METHODS
    from tunegen.runtime.models import BUILTIN_MODELS

    set_debug(debug)

    typer.echo("specs (tunegen cp NAME my_spec.yaml, or tunegen new --spec NAME):")
    for name, path in sorted(builtin_specs().items()):
        typer.echo(f"  {name:<12} {_spec_summary(path)}")
    typer.echo(f"methods: {', '.join(METHODS)}")
    typer.echo(f"models:  {', '.join(sorted(BUILTIN_MODELS))}")


@app.command("cp")
def copy_builtin(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Built-in spec name (see tunegen ls).")
    ],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="File to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite DEST if it exists.")] = False,
    debug: Debug = False,
) -> None:
    """Copy a built-in spec to DEST to edit; its data paths are made absolute so they still resolve."""
    from tunegen.compiler.cli.copy_spec import copy_spec

    set_debug(debug)

    builtin = builtin_specs()
    if name not in builtin:
        raise TunegenError(
            f"{name}: no built-in spec of that name (built-in: {', '.join(sorted(builtin))})"
        )
    copy_spec(builtin[name], dest, force=force)
    typer.echo(f"wrote {dest}")


@app.command("schema")
def print_schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file instead.")
    ] = None,
) -> None:
    """Print the spec's JSON Schema (every key, type, range, choice and doc) for editors and tools.

    Specs written by `tunegen cp` point yaml-language-server at the copy shipped with tunegen.
    """
    from tunegen.compiler.schema import json_schema_text

    if output is None:
        typer.echo(json_schema_text(), nl=False)
        return
    from tunegen.compiler.write import write_outputs

    write_outputs({output: json_schema_text()}, force=True)
    typer.echo(f"wrote {output}")


def _spec_summary(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("#") else ""
