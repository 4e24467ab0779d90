"""`tunegen import`: a torchtune or axolotl config in, a tunegen spec out.

The spec goes to stdout (or `-o FILE`); every source key that maps to no spec key is one line on
stderr, `source.key.path: not imported (reason)`, so nothing is dropped without a word. The
mapping itself lives in `compiler/importers/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug
from tunegen.runtime.errors import TunegenError

__all__ = ["import_config"]


@app.command(
    name="import",
    epilog="\b\nExamples:\n"
    "  tunegen import llama3_2/1B_lora_single_device.yaml -o my_lora.yaml\n"
    "  tunegen import axolotl/lora-1b.yml --from axolotl > my_lora.yaml",
)
def import_config(
    config: Annotated[
        Path,
        typer.Argument(metavar="CONFIG", help="A torchtune recipe config or an axolotl config."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="SPEC", help="Write the spec here (default: stdout)."
        ),
    ] = None,
    source: Annotated[
        Literal["torchtune", "axolotl"] | None,
        typer.Option(
            "--from", metavar="torchtune|axolotl", help="The config's style (default: detected)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing SPEC file.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Turn a torchtune or axolotl config into a tunegen spec; report every key not imported.

    A model or data set named by a Hugging Face hub id keeps its id: download it and point the
    spec at the local copy (tunegen validate says how).
    """
    from tunegen.compiler.importers import import_config as read
    from tunegen.compiler.importers import spec_text

    set_debug(debug)
    if output is not None and output.exists() and not force:
        raise TunegenError(f"{output}: already exists; pass --force to overwrite it")
    imported = read(config, source)
    text = spec_text(imported)
    for key, reason in imported.not_imported:
        typer.echo(f"{key}: not imported ({reason})", err=True)
    for key, note in imported.notes:
        typer.echo(f"{key}: note: {note}", err=True)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}; next: tunegen validate {output}", err=True)
