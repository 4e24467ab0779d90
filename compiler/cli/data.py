"""`tunegen data`: the training data as the recipe will see it (samples, statistics, export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from omegaconf import DictConfig, OmegaConf

from tunegen.compiler.cli import data_view
from tunegen.compiler.cli.app import (
    OVERRIDES_HELP,
    Debug,
    Overrides,
    app,
    is_spec,
    overrides_of,
    set_debug,
)
from tunegen.runtime.errors import TunegenError

__all__ = ["data"]


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=OVERRIDES_HELP + "\n\n\b\nExample:\n  tunegen data my_spec.yaml --show 2",
)
def data(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A spec, or a generated config.")],
    overrides: Overrides = None,
    show: Annotated[
        int | None,
        typer.Option(
            "--show",
            min=0,
            metavar="N",
            help="Samples to print token by token (default 3; 1 with --packed).",
        ),
    ] = None,
    packed: Annotated[
        bool, typer.Option("--packed", help="Show packed sequences with document boundaries.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the statistics, as one JSON object.")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write every sample's input_ids and labels to this .jsonl.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --export file.")] = False,
    debug: Debug = False,
) -> None:
    """Show the training data as the recipe will see it: samples, statistics, export.

    Overrides change the config first, as in `tunegen run`.
    """
    set_debug(debug)
    overrides = overrides_of("data", overrides)
    if not path.is_file():
        raise TunegenError(f"{path}: file not found")
    cfg = data_view.load_data_config(path, overrides, is_spec=is_spec(path))
    view = data_view.build_data_view(cfg)
    stats = data_view.stats_of(view)
    if export is not None:
        count = data_view.export_jsonl(view.dataset, export, force=force)
        samples = "sample" if count == 1 else "samples"
        typer.echo(f"wrote {count:,} {samples} to {export}", err=as_json)
    if as_json:
        typer.echo(json.dumps(stats.to_dict()))
        return
    style = data_view.Style(color=data_view.use_color())
    count = (1 if packed else 3) if show is None else show
    if count:
        typer.echo(style.legend)
    if packed:
        rendered = data_view.render_packs(view, count, style)
    else:
        rendered = [
            data_view.render_sample(view, i, style) for i in range(min(count, len(view.dataset)))
        ]
    for text in rendered:
        typer.echo(text)
    typer.echo(data_view.format_stats(stats, source=view.source))
    note = _validation_note(cfg, len(view.dataset))
    if note:
        typer.echo(note)


def _validation_note(cfg: DictConfig, samples: int) -> str:
    """Where the run's validation data comes from, with the split's sizes; "" without any."""
    fraction = OmegaConf.select(cfg, "dataloader.val_split", default=None)
    if fraction is not None:
        from tunegen.runtime.validation import split_sizes

        training, validation = split_sizes(samples, fraction)
        return (
            f"validation: {validation:,} of these {samples:,} samples are held out "
            f"({fraction * 100:g}%, chosen by the seed); {training:,} train"
        )
    if "val_dataset" in cfg:
        return f"validation: the samples of {cfg.val_dataset.source}"
    return ""
