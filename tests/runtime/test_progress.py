"""The console of a run: a live line on a terminal (read through a pseudo-terminal), plain
lines elsewhere, and the closing summary."""

from __future__ import annotations

import json
import math
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunegen.runtime import progress as progress_module
from tunegen.runtime.metric_logging import MetricLogger
from tunegen.runtime.progress import Progress, ema, memory_usage, run_outputs

# Three steps through Progress and MetricLogger, as a recipe's train() drives them.
SCRIPT = textwrap.dedent(
    """
    import sys
    from tunegen.runtime.metric_logging import MetricLogger
    from tunegen.runtime.progress import Progress

    logger = MetricLogger(log_dir=sys.argv[1])
    logger.start_at(0)
    progress = Progress(total_steps=3, steps_per_epoch=2, mode=sys.argv[2])
    for step, loss in enumerate([4.0, 3.0, 2.0], start=1):
        metrics = {"loss": loss, "tokens_per_s": 1000, "lr": 1e-3}
        progress.update(step, metrics, tokens=100)
        logger.log(step, metrics)
        if step == 2:
            logger.log_text("a note while training")
    progress.close()
    progress.summary(sys.argv[1])
    logger.close()
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TERM"] = "xterm"
    return env


def _run_in_pty(*args: str) -> str:
    """Run SCRIPT with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args], stdout=secondary, stderr=secondary, env=_env()
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_on_a_terminal_a_live_line_replaces_the_step_lines(tmp_path: Path) -> None:
    out = _run_in_pty(str(tmp_path), "auto")
    assert "\r\x1b[2K" in out  # redrawn in place
    assert "100% [##########] 3/3 ep 2/2" in out
    assert "ETA" in out and "rss " in out and "1,000 tok/s" in out and "lr 1.0e-03" in out
    assert "step    1 |" not in out  # the live line shows the steps
    # A line printed while the live line is shown lands on a line of its own.
    assert "\r\x1b[2Ka note while training\r\n" in out
    assert "done: step 3/3 (3 trained in" in out
    # metrics.jsonl is written the same either way
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]


def test_without_a_terminal_plain_lines_and_the_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), "auto"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert lines[0] == "step    1 | loss 4.0000 | tokens_per_s 1,000 | lr 1.0e-03"
    assert lines[2] == "a note while training"
    assert lines[4].startswith("done: step 3/3 (3 trained in 0:00, ")
    assert lines[4].endswith(" tokens/s)")
    assert lines[5] == "  final train loss   2.0000 (smoothed 3.7100)"
    assert lines[6].startswith("  peak memory        ") and lines[6].endswith(" RSS")
    assert lines[7] == f"  metrics            {tmp_path}/metrics.jsonl"
    assert lines[8] == f"  plot               tunegen plot {tmp_path}"


def test_ci_gets_plain_lines_even_on_a_terminal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("CI", "true")
    assert not Progress(total_steps=1, steps_per_epoch=1).live
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TERM", "xterm")
    assert Progress(total_steps=1, steps_per_epoch=1).live
    assert not Progress(total_steps=1, steps_per_epoch=1, mode="lines").live


def test_line_fields_and_a_narrow_terminal() -> None:
    progress = Progress(total_steps=10, steps_per_epoch=4, start_step=4, mode="lines")
    progress.update(5, {"loss": 2.0, "lr": 3e-4, "tokens_per_s": 12345.6}, tokens=7)
    line = progress.line()
    assert line.startswith(" 50% [#####.....] 5/10 ep 2/3 loss 2.0000 lr 3.0e-04 12,346 tok/s ETA ")
    narrow = progress.line(width=60)
    assert narrow.startswith("5/10 ep 2/3 loss 2.0000") and len(narrow) <= 60  # bar dropped first


def test_summary_counts_this_session_and_best_validation(tmp_path: Path) -> None:
    progress = Progress(total_steps=6, steps_per_epoch=6, start_step=3, mode="lines")
    for step, val in [(4, 1.5), (5, 1.2), (6, 1.4)]:
        progress.update(step, {"loss": 2.0, "val_loss": val}, tokens=10)
    lines = progress.summary_lines(tmp_path)
    assert (
        lines[0].startswith("done: step 6/6 (3 trained in ") and ", resumed at step 3" in lines[0]
    )
    assert "  best val loss      1.2000 at step 5" in lines


def test_a_nan_loss_does_not_poison_the_smoothed_loss() -> None:
    progress = Progress(total_steps=3, steps_per_epoch=3, mode="lines")
    for step, loss in enumerate([2.0, math.nan, 1.0], start=1):
        progress.update(step, {"loss": loss})
    assert progress.smoothed_loss == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)
    assert ema([1.0, math.nan, 3.0]) == pytest.approx([1.0, 1.0, 1.2])


def test_run_outputs_names_checkpoints_exports_and_metrics(tmp_path: Path) -> None:
    for name in ("step_000002", "step_000004", "hf_model", "tensorboard"):
        (tmp_path / name).mkdir()
    (tmp_path / "metrics.jsonl").write_text("")
    assert run_outputs(tmp_path) == {
        "checkpoints": f"{tmp_path / 'step_000004'} (latest of 2)",
        "hf_model": f"{tmp_path / 'hf_model'}/",
        "metrics": f"{tmp_path / 'metrics.jsonl'}",
        "tensorboard": f"{tmp_path / 'tensorboard'}/",
        "plot": f"tunegen plot {tmp_path}",
    }


def test_memory_usage_on_cpu_reports_rss() -> None:
    now, peak = memory_usage("cpu"), memory_usage("cpu", peak=True)
    assert 10 * 2**20 < now.rss <= peak.rss
    assert now.short().startswith("rss ") and not now.cuda


def test_echo_without_a_live_line_just_prints(capsys) -> None:
    assert progress_module._live is None
    progress_module.echo("hello")
    assert capsys.readouterr().out == "hello\n"


def test_metric_logger_hands_records_to_its_backends(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def start_at(self, step: int) -> None:
            self.calls.append(("start_at", step))

        def log(self, step: int, metrics: dict) -> None:
            self.calls.append(("log", step, dict(metrics)))

        def close(self) -> None:
            self.calls.append(("close",))

    recorder = Recorder()
    logger = MetricLogger(log_dir=tmp_path, stdout=False, backends={"rec": recorder})
    logger.start_at(0)
    logger.log(1, {"loss": 2.5, "tokens": 3})
    logger.close()
    assert recorder.calls == [("start_at", 0), ("log", 1, {"loss": 2.5, "tokens": 3}), ("close",)]


def test_ema_of_sparse_logs_decays_by_the_step_gap() -> None:
    # Logged every 25 steps: each point weighs as 25 per-step points of that value would.
    assert ema([4.0, 2.0], beta=0.9, steps=[25, 50]) == pytest.approx(
        [4.0, 0.9**25 * 4.0 + (1 - 0.9**25) * 2.0]
    )
    per_step = ema([4.0] + [2.0] * 25, beta=0.9)
    assert ema([4.0, 2.0], beta=0.9, steps=[0, 25])[-1] == pytest.approx(per_step[-1])
