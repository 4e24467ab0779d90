"""SIGKILL at any point: the last complete checkpoint survives, and resuming from it is exact.

The first test kills a process inside `Checkpointer.save` at each of its durable steps (every
fsync, the rename); the second kills a real training run at a random moment (possibly mid-save)
and resumes it with `training.resume=auto`. The long version, with many kills over thousands of
steps, is `bench/soak_resume.py`.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import losses, tunegen
from safetensors.torch import load_file

from tunegen.runtime.checkpointing import Checkpointer

# Every test here trains through a subprocess: `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

# Saves step 1, then starts saving step 2 and SIGKILLs itself at the KILL_AT-th durable
# operation (an fsync of a file or dir, or the rename that publishes the step dir).
SAVE_AND_DIE = """
import os, signal, sys
import torch
from tunegen.runtime.checkpointing import Checkpointer

out, kill_at = sys.argv[1], int(sys.argv[2])
ckpt = Checkpointer(output_dir=out)
ckpt.save(1, {"w": torch.full((64, 64), 1.0)}, recipe_state={"step": 1})
seen = 0
def dying(real):
    def call(*args, **kwargs):
        global seen
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
os.fsync, os.rename = dying(os.fsync), dying(os.rename)
ckpt.save(2, {"w": torch.full((64, 64), 2.0)}, recipe_state={"step": 2})
print("survived", seen)
"""


def durable_operations(tmp_path: Path) -> int:
    """How many fsyncs and renames one save makes (the script survives when never killed)."""
    result = subprocess.run(
        [sys.executable, "-c", SAVE_AND_DIE, str(tmp_path / "count"), "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


def test_a_kill_anywhere_in_a_save_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    total = durable_operations(tmp_path)
    assert total >= 5  # weights, state, marker, temp dir, rename, output dir
    for kill_at in range(1, total + 1):
        out = tmp_path / f"kill_{kill_at}"
        died = subprocess.run(
            [sys.executable, "-c", SAVE_AND_DIE, str(out), str(kill_at)],
            capture_output=True,
            check=False,
        )
        assert died.returncode == -signal.SIGKILL
        checkpointer = Checkpointer(output_dir=out)
        latest = checkpointer.latest()
        weights, state = checkpointer.load(latest)
        # Before the rename the new step is invisible; after it, it is complete.
        assert latest.name in ("step_000001", "step_000002")
        step = int(latest.name[-1])
        assert state["step"] == step and torch.equal(weights["w"], torch.full((64, 64), step))
        # The next save clears the dead temp dir and works.
        checkpointer.save(3, {"w": torch.zeros(1)})
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


SPEC = """\
name: killed
method: lora
model: tiny
data: {path: data/demo_train.jsonl, max_seq_len: 64}
lora: {rank: 8, alpha: 16, targets: [q_proj, v_proj, down_proj]}
training: {max_steps: 80, batch_size: 8, lr: 3.0e-3, warmup_steps: 2, seed: 5}
checkpoint: {output_dir: runs/killed, save_every_n_steps: 5}
logging: {every_n_steps: 1}
"""


def start(output_dir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, "generated/killed.py", "--config", "generated/killed.yaml"),
            *(f"checkpointer.output_dir={output_dir}", *extra),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_mid_training_then_resume_auto_gives_identical_losses_and_weights(
    demo_workdir: Path, seed: int
) -> None:
    Path("spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    reference = start("runs/reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    # Kill the run at a random moment after its first checkpoint: maybe mid-step, maybe mid-save.
    victim = start("runs/victim")
    while not (Path("runs/victim/step_000005") / "checkpoint.json").exists():
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = losses(Path("runs/victim/metrics.jsonl"))
    assert len(done_before) < 80  # it really was interrupted

    resumed = start("runs/victim", "training.resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected = losses(Path("runs/reference/metrics.jsonl"))
    # Steps replayed after the kill are logged twice; every logged value equals the reference.
    for line in Path("runs/victim/metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            assert row["loss"] == expected[row["step"]], row
    final_a = load_file("runs/reference/step_000080/adapter.safetensors")
    final_b = load_file("runs/victim/step_000080/adapter.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_soak_script_is_runnable(tmp_path: Path) -> None:
    """bench/soak_resume.py parses its arguments (the soak itself runs on demand, not in CI)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "soak_resume.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--kills" in result.stdout, result.stderr
