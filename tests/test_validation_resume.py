"""A validating run killed mid-run resumes exactly: the same train losses, the same validation
losses at the same steps, and the same best checkpoint as the uninterrupted run.

The run is killed with SIGKILL at a random moment after a checkpoint and resumed with
`training.resume=auto`, as in tests/test_kill_and_resume.py. LoRA dropout is on: the training
and validation DataLoaders have their own generators, so neither starting an epoch nor
validating draws from the global RNG that dropout uses, and the resumed run draws exactly the
dropout masks of the uninterrupted one.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import losses, read_metrics, tunegen_in_process

from tunegen.runtime.checkpointing import Checkpointer

pytestmark = pytest.mark.slow  # trains through subprocesses

SPEC = """\
name: resumed_val
method: lora
model: tiny
data: {path: data/demo_train.jsonl, max_seq_len: 64, val_split: 0.005}
lora: {rank: 8, alpha: 16, dropout: 0.1, targets: [q_proj, v_proj]}
training: {max_steps: 8, batch_size: 4, lr: 3.0e-3, seed: 5, val_every_n_steps: 2, val_max_batches: 2}
checkpoint: {save_every_n_steps: 2, keep_best: val_loss, export_hf: false}
logging: {every_n_steps: 1}
"""


def start(output_dir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, "generated/resumed_val.py", "--config", "generated/resumed_val.yaml"),
            f"checkpointer.output_dir={output_dir}",
            "training.resume=auto",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def validation(run_dir: Path) -> dict[int, float]:
    """step -> val_loss of a run's metrics file."""
    return {
        r["step"]: r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r
    }


def test_a_killed_validating_run_resumes_exactly(demo_workdir: Path) -> None:
    Path("spec.yaml").write_text(SPEC)
    assert tunegen_in_process("new", "--spec", "spec.yaml").returncode == 0
    reference = start("runs/reference")
    assert reference.wait(timeout=900) == 0, reference.stderr.read()

    killed = start("runs/killed")
    metrics = Path("runs/killed/metrics.jsonl")
    # Kill it at a random moment once step 5 is logged: after the checkpoint of step 4, before
    # (or while) it validates and saves step 6.
    while not metrics.exists() or 5 not in losses(metrics):
        assert killed.poll() is None, killed.stderr.read()
        time.sleep(0.02)
    time.sleep(random.Random(19).uniform(0.0, 1.0))
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert Checkpointer(output_dir="runs/killed").latest() is not None

    resumed = start("runs/killed")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()

    ref, run = Path("runs/reference"), Path("runs/killed")
    assert losses(run / "metrics.jsonl") == losses(ref / "metrics.jsonl")
    assert validation(run) == validation(ref)
    assert sorted(validation(ref)) == [2, 4, 6, 8]
    best = Checkpointer(output_dir=ref, keep_best="val_loss").best()
    assert Checkpointer(output_dir=run, keep_best="val_loss").best() == best
    logged = validation(ref)
    assert best == (min(logged, key=lambda s: (logged[s], s)), min(logged.values()))
    shutil.rmtree("runs")
