"""`tunegen new`: compile a spec into a recipe and its config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug, spec_path

__all__ = ["new"]


@app.command(
    epilog="\b\nExamples:\n"
    "  tunegen new --spec lora                 a built-in spec (tunegen ls lists them)\n"
    "  tunegen new -s my_spec.yaml -o recipes  your spec, written to recipes/"
)
def new(
    spec: Annotated[
        str,
        typer.Option("--spec", "-s", metavar="FILE", help="Spec file, or a built-in spec name."),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", metavar="DIR", help="Where to write.")
    ] = Path("generated"),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing generated files.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Validate a spec and write generated/<name>.py and generated/<name>.yaml."""
    from tunegen.compiler.pipeline import compile_spec, write_compiled

    set_debug(debug)

    compiled = compile_spec(spec_path(spec), output_dir)
    for path in write_compiled(compiled, force=force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tunegen run {compiled.recipe_path}")
