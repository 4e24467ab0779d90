"""Killed or interrupted at any point: no checkpoint is half written, and resuming is exact.

The first test kills a process inside `Checkpointer.save` at each of its durable steps (every
fsync, the rename); the others stop a real training run at a random moment (before the first
checkpoint, mid-step, possibly mid-save) with SIGKILL, SIGINT or SIGTERM and resume it with
`training.resume=auto` (after a signal, with the exact command the run printed). The long version, with many kills over thousands of
steps, is `bench/soak_resume.py`.
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
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


# The same run on packed rows, shorter: packs, their order and the skip on resume are exact too.
PACKED_SPEC = SPEC.replace("max_seq_len: 64}", "max_seq_len: 64, packed: true}").replace(
    "max_steps: 80", "max_steps: 20"
)


def compile_and_run_reference(root: Path, spec: str) -> Path:
    """Compile `spec` as the `killed` recipe in `root` and run it uninterrupted."""
    shutil.copytree(Path(__file__).resolve().parents[1] / "specs" / "data", root / "data")
    (root / "spec.yaml").write_text(spec)
    assert tunegen("new", "--spec", "spec.yaml", cwd=root).returncode == 0
    reference = start("runs/reference", cwd=root)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dir with the compiled `killed` recipe and its uninterrupted reference run."""
    return compile_and_run_reference(tmp_path_factory.mktemp("killed"), SPEC)


@pytest.fixture(scope="module")
def packed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same on packed rows (data.packed: true), 20 steps."""
    return compile_and_run_reference(tmp_path_factory.mktemp("packed"), PACKED_SPEC)


def start(output_dir: str, *extra: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, "generated/killed.py", "--config", "generated/killed.yaml"),
            *(f"checkpointer.output_dir={output_dir}", *extra),
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(path: Path, steps: int, process: subprocess.Popen) -> None:
    """Block until the metrics file at `path` holds `steps` step records."""
    while not path.exists() or len(losses(path)) < steps:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)


def assert_matches_reference(run: Path, total: int = 80) -> None:
    """Every step of `run` was logged exactly once with the reference loss, and the final
    adapters are bit-identical; no step dir is incomplete and no temp dir is left."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in records if "loss" in row]
    assert steps == list(range(1, total + 1)), steps
    expected = losses(Path("runs/reference/metrics.jsonl"))
    assert all(row["loss"] == expected[row["step"]] for row in records if "loss" in row)
    final_a = load_file(f"runs/reference/step_{total:06d}/adapter.safetensors")
    final_b = load_file(run / f"step_{total:06d}" / "adapter.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    complete = {path.name for path in run.glob("step_*") if Checkpointer.is_complete(path)}
    assert complete == {path.name for path in run.glob("step_*")}
    assert not list(run.glob(".tmp-*"))


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_mid_training_then_resume_auto_gives_identical_losses_and_weights(
    project: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    run = Path(f"runs/sigkill_{seed}")
    # Kill the run at a random moment after its first checkpoint: maybe mid-step, maybe mid-save.
    victim = start(str(run))
    while not (run / "step_000005" / "checkpoint.json").exists():
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(losses(run / "metrics.jsonl")) < 80  # it really was interrupted

    resumed = start(str(run), "training.resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    # The steps replayed after the kill replace those the killed run logged after its checkpoint.
    assert_matches_reference(run)
    assert '{"event": "resume", "step": ' in (run / "metrics.jsonl").read_text()


def test_sigkill_a_packed_run_then_resume_auto_gives_identical_losses_and_weights(
    packed_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(packed_project)
    run = Path("runs/sigkill")
    victim = start(str(run))
    wait_for_steps(run / "metrics.jsonl", 7, victim)  # past the step-5 checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(losses(run / "metrics.jsonl")) < 20  # it really was interrupted

    resumed = start(str(run), "training.resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_matches_reference(run, total=20)
    assert '{"event": "resume", "step": ' in (run / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    ("signum", "seed"), [(signal.SIGINT, 0), (signal.SIGTERM, 1), (signal.SIGINT, 2)]
)
def test_ctrl_c_or_sigterm_saves_the_step_and_the_printed_command_resumes_exactly(
    project: Path, signum: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    rng = random.Random(seed)
    run = f"runs/signal_{seed}"
    victim = start(run)
    # Anywhere from before the first checkpoint (step 5) to mid-save of a later one.
    wait_for_steps(Path(run) / "metrics.jsonl", rng.randint(1, 12), victim)
    time.sleep(rng.uniform(0.0, 0.2))
    victim.send_signal(signum)
    assert victim.wait(timeout=600) == 128 + signum
    stderr = victim.stderr.read()
    step = len(losses(Path(run) / "metrics.jsonl"))
    command = f"tunegen run generated/killed.py checkpointer.output_dir={run} training.resume=auto"
    assert (
        f"interrupted at step {step}; checkpoint saved to {run}/step_{step:06d}; resume with:"
        f" {command}"
    ) in stderr, stderr
    assert Checkpointer(output_dir=run).latest() == Path(run) / f"step_{step:06d}"  # none lost

    resumed = tunegen(*shlex.split(command)[1:])  # the words after `tunegen`
    assert resumed.returncode == 0, resumed.stderr
    assert_matches_reference(Path(run))


def test_a_second_ctrl_c_stops_at_once_and_leaves_no_half_written_checkpoint(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    run = "runs/twice"
    victim = start(run)
    wait_for_steps(Path(run) / "metrics.jsonl", 7, victim)
    victim.send_signal(signal.SIGINT)
    time.sleep(0.01)
    victim.send_signal(signal.SIGINT)
    assert victim.wait(timeout=600) == 130
    assert "stopped at once" in victim.stderr.read()
    resumed = start(run, "training.resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_matches_reference(Path(run))


def test_soak_script_is_runnable(tmp_path: Path) -> None:
    """bench/soak_resume.py parses its arguments (the soak itself runs on demand, not in CI)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "soak_resume.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--kills" in result.stdout, result.stderr
