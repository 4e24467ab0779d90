"""`tunegen ls`, `tunegen cp` and `tunegen schema`: the built-in specs and the spec's JSON Schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tunegen.compiler.cli.app import Debug, app, builtin_specs, set_debug
from tunegen.runtime.errors import TunegenError

__all__ = ["copy_builtin", "list_builtins", "print_schema"]


LS_EPILOG = """\b
Example:
  tunegen ls                          then: tunegen cp lora my_lora.yaml"""
METHOD_NOTES = {
    "full": "update every weight",
    "lora": "low-rank adapters on a frozen base",
    "dora": "LoRA plus learned magnitudes",
    "qlora": "LoRA on a 4-bit NF4 base",
    "dpo": "preference optimisation (chosen/rejected pairs)",
    "kd": "distillation from a teacher",
    "grpo": "online RL: sampled completions scored by your reward functions",
}


@app.command("ls", epilog=LS_EPILOG)
def list_builtins(debug: Debug = False) -> None:
    """List the built-in specs, methods and models, as tables."""
    from tunegen.compiler.schema import METHODS
    from tunegen.runtime.models import BUILTIN_MODELS

    set_debug(debug)

    specs = [(name, *_spec_fields(path)) for name, path in sorted(builtin_specs().items())]
    typer.echo("specs (tunegen cp NAME my_spec.yaml, or tunegen new --spec NAME):")
    _echo_table(("name", "method", "model", "what it does"), specs)
    typer.echo("\nmethods (a spec's method:):")
    _echo_table(("method", "what it trains"), [(m, METHOD_NOTES.get(m, "")) for m in METHODS])
    typer.echo("\nmodels (a spec's model:, or a local Hugging Face checkpoint dir):")
    models = [(name, _parameter_count(BUILTIN_MODELS[name])) for name in sorted(BUILTIN_MODELS)]
    _echo_table(("model", "parameters"), models)


@app.command("cp", epilog="\b\nExample:\n  tunegen cp lora my_lora.yaml")
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


@app.command("schema", epilog="\b\nExample:\n  tunegen schema -o tunegen.schema.json")
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


def _spec_fields(path: Path) -> tuple[str, str, str]:
    """A built-in spec's method, model and first comment line (its one-line summary)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    first = text.splitlines()[0]
    summary = first.lstrip("# ").strip() if first.startswith("#") else ""
    return str(values.get("method", "")), str(values.get("model", "")), summary


def _parameter_count(build: Callable[[], Any]) -> str:
    """The model's parameter count, e.g. 3.1M, built on the meta device (no memory, no time)."""
    import torch

    with torch.device("meta"):
        model = build()
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _echo_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
        typer.echo("  " + "  ".join([*cells, str(row[-1])]).rstrip())
