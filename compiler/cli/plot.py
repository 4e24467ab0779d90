"""`tunegen plot RUN_DIR [RUN_DIR ...] [-o out.png]`: a run's curves, or several runs overlaid.

One PNG, three panels against the optimizer step: loss (train raw and smoothed, validation where
logged), learning rate, tokens/s. It reads only `RUN_DIR/metrics.jsonl` (`{"step": N, ...}` records;
`{"event": ...}` markers are skipped), so it works on a finished, a running or a killed run.
matplotlib is a dependency of tunegen (a broken install is still one clear line).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug
from tunegen.runtime.errors import TunegenError

__all__ = ["DPI", "FIGSIZE", "load_metrics", "plot_command", "plot_runs"]

FIGSIZE = (8.0, 9.0)  # inches
DPI = 100  # so the PNG is 800 x 900 pixels
METRICS_FILE = "metrics.jsonl"
PLOT_EPILOG = """\b
Examples:
  tunegen plot runs/lora                       writes runs/lora/plot.png
  tunegen plot runs/lora runs/dora -o cmp.png  both runs overlaid, with a legend"""


@app.command("plot", epilog=PLOT_EPILOG)
def plot_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR...", help="Run dirs holding a metrics.jsonl."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PNG",
            help="Image to write (default: RUN_DIR/plot.png for one run, plot.png for several).",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Plot train loss (raw, smoothed), validation loss, lr and tokens/s against the step."""
    set_debug(debug)
    runs = {_label(run_dir, run_dirs): load_metrics(run_dir) for run_dir in run_dirs}
    if output is None:
        output = run_dirs[0] / "plot.png" if len(run_dirs) == 1 else Path("plot.png")
    plot_runs(runs, output)
    typer.echo(f"wrote {output}")


def load_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The step records of `run_dir/metrics.jsonl`, in step order (resume markers dropped)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        what = "no such dir" if not run_dir.is_dir() else f"no {METRICS_FILE} in it"
        raise TunegenError(f"{run_dir}: {what} (tunegen run writes one into its run dir)")
    records: dict[int, dict[str, float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise TunegenError(f"{path}:{number}: not a JSON line ({e.args[0]})") from None
        if (
            isinstance(record, dict)
            and "event" not in record
            and isinstance(record.get("step"), int)
        ):
            # A step may have several records (its train metrics, then its validation).
            records.setdefault(record["step"], {}).update({k: _float(v) for k, v in record.items()})
    if not records:
        raise TunegenError(f"{path}: no step records yet")
    return [records[step] for step in sorted(records)]


def plot_runs(runs: dict[str, list[dict[str, float]]], output: Path) -> None:
    """Write one PNG with a loss, an lr and a tokens/s panel; one colour per run."""
    plt = _pyplot()
    from tunegen.runtime.progress import ema

    fig, (loss_ax, lr_ax, speed_ax) = plt.subplots(3, 1, figsize=FIGSIZE, dpi=DPI, sharex=True)
    for index, (label, records) in enumerate(runs.items()):
        color = f"C{index}"
        loss_steps, losses = _series(records, "loss")
        loss_ax.plot(loss_steps, losses, color=color, alpha=0.3, linewidth=1)
        loss_ax.plot(
            loss_steps,
            ema(losses, steps=loss_steps),
            color=color,
            label=f"{label} train (smoothed)",
        )
        val_steps, vals = _series(records, "val_loss")
        if val_steps:
            loss_ax.plot(val_steps, vals, "o--", color=color, label=f"{label} validation")
        lr_ax.plot(*_series(records, "lr"), color=color, label=label)
        speed_ax.plot(*_series(records, "tokens_per_s"), color=color, label=label)
    loss_ax.set(title="loss (faint: raw train loss)", ylabel="loss")
    lr_ax.set(ylabel="learning rate")
    speed_ax.set(xlabel="step", ylabel="tokens/s")
    for ax in (loss_ax, lr_ax, speed_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize="small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def _series(records: list[dict[str, float]], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that hold metric `name`."""
    pairs = [(int(r["step"]), r[name]) for r in records if name in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _label(run_dir: Path, run_dirs: list[Path]) -> str:
    """The run dir's name, or its full path where two runs share a name."""
    names = [d.name for d in run_dirs]
    return run_dir.name if names.count(run_dir.name) == 1 else str(run_dir)


def _float(value: object) -> float:
    """A metric value as a float ("NaN", "Infinity" as metrics.jsonl writes them)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend; a missing one names the extra."""
    if importlib.util.find_spec("matplotlib") is None:
        raise TunegenError("tunegen plot needs matplotlib: pip install matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
