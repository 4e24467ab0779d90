"""`tunegen plot`: one PNG of a run's curves, or of several runs overlaid, from metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import tunegen_in_process as tunegen

from tunegen.compiler.cli.plot import DPI, FIGSIZE, load_metrics

pytest.importorskip("matplotlib")
WIDTH, HEIGHT = int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's C0 and C1: run 1, run 2


def _write_run(
    run_dir: Path, *, lr: float, speed: int = 1000, resumed_at: int | None = None
) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, 21):
        record = {"step": step, "loss": 5.0 / step + 0.1 * (step % 3), "lr": lr * (1 - step / 20)}
        record["tokens_per_s"] = speed + 10 * step
        if step % 5 == 0:
            record["val_loss"] = 4.0 / step
        lines.append(json.dumps(record))
        if step == resumed_at:
            lines.append(json.dumps({"event": "resume", "step": step}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def _pixels_near(image, color: tuple[int, int, int], tolerance: int = 12) -> int:
    rgb = (image[..., :3] * 255).round()
    return int((abs(rgb - color) <= tolerance).all(axis=-1).sum())


def test_two_runs_overlaid_in_one_png(workdir: Path) -> None:
    import matplotlib.image

    _write_run(workdir / "runs" / "a", lr=1e-3, resumed_at=10)
    _write_run(workdir / "runs" / "b", lr=3e-4, speed=1500)
    result = tunegen("plot", "runs/a", "runs/b", "-o", "cmp.png", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "wrote cmp.png\n"
    image = matplotlib.image.imread(workdir / "cmp.png")
    assert image.shape[:2] == (HEIGHT, WIDTH)
    # Both runs' lines are drawn (not a blank canvas): each colour covers many pixels.
    assert _pixels_near(image, BLUE) > 500 and _pixels_near(image, ORANGE) > 500
    # Each of the three panels holds drawn lines, not only its frame.
    for top, bottom in ((0.05, 0.3), (0.38, 0.6), (0.68, 0.9)):
        panel = image[int(top * HEIGHT) : int(bottom * HEIGHT)]
        assert _pixels_near(panel, BLUE) > 50, (top, bottom)


def test_one_run_defaults_to_a_png_in_its_dir(workdir: Path) -> None:
    _write_run(workdir / "run", lr=1e-3)
    result = tunegen("plot", "run", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "run" / "plot.png").stat().st_size > 10_000


def test_load_metrics_skips_markers_and_reads_non_finite_values(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n{"event": "resume", "step": 1}\n{"step": 2, "loss": "NaN"}\n\n'
    )
    records = load_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 2.0 and math.isnan(records[1]["loss"])


def test_help_has_an_example() -> None:
    result = tunegen("plot", "--help")
    assert "tunegen plot runs/lora runs/dora -o cmp.png" in result.stdout
