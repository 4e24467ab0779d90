"""`tunegen run` as a user sees it: a live progress line on a terminal (a pseudo-terminal here),
plain step lines in a pipe, the closing summary either way, and a TensorBoard backend's events."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest
from helpers import TUNEGEN, read_metrics, tunegen

pytestmark = pytest.mark.slow

SPEC = """\
name: tiny_run
method: full
model: tiny
data: {path: train.jsonl, max_seq_len: 64}
training: {max_steps: 3, batch_size: 2}
checkpoint: {export_hf: false}
logging: {backends: [jsonl, tensorboard]}
"""
ROW = '{"instruction": "Say hi.", "output": "hi"}\n'


def _in_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    main, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"TERM": "xterm"}
    proc = subprocess.Popen(args, cwd=cwd, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return proc.wait(timeout=600), b"".join(chunks).decode()


def test_run_on_a_terminal_and_in_a_pipe(workdir: Path) -> None:
    pytest.importorskip("tensorboard")
    (workdir / "spec.yaml").write_text(SPEC)
    (workdir / "train.jsonl").write_text(ROW * 8)
    assert tunegen("new", "-s", "spec.yaml", cwd=workdir).returncode == 0

    piped = tunegen(
        "run", "generated/tiny_run.py", "checkpointer.output_dir=runs/piped", cwd=workdir
    )
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stdout and "\x1b" not in piped.stdout
    steps = [line for line in piped.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step    1", "step    2", "step    3"]
    assert "done: step 3/3 (3 trained in " in piped.stdout
    assert "  metrics            runs/piped/metrics.jsonl" in piped.stdout
    assert "  tensorboard        runs/piped/tensorboard/" in piped.stdout
    assert "  plot               tunegen plot runs/piped" in piped.stdout

    status, screen = _in_pty(
        [*TUNEGEN, "run", "generated/tiny_run.py", "checkpointer.output_dir=runs/tty"], workdir
    )
    assert status == 0, screen[-2000:]
    assert "100% [##########] 3/3 ep 1/1 loss " in screen and " ETA " in screen
    assert "step    1 |" not in screen
    assert "done: step 3/3 (3 trained in " in screen
    assert "  final train loss   " in screen and "  peak memory        " in screen

    # Either way the run's record is the same metrics.jsonl, and TensorBoard holds each step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in ("piped", "tty"):
        records = read_metrics(workdir / "runs" / run / "metrics.jsonl")
        assert [r["step"] for r in records] == [1, 2, 3]
        events = EventAccumulator(str(workdir / "runs" / run / "tensorboard"))
        events.Reload()
        losses = [(e.step, e.value) for e in events.Scalars("loss")]
        assert losses == [(r["step"], pytest.approx(r["loss"])) for r in records]
