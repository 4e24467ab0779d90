"""Spec -> generated recipe -> trained model, on the built-in tiny model, through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import (
    absurd_optimizer,
    losses,
    run_recipe,
    run_recipe_subprocess,
    tunegen_in_process,
)
from safetensors.torch import load_file

# Every test here trains (in this process, through `tunegen run`): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

SPEC = """\
name: e2e_{method}
method: {method}
model: tiny
data: {{path: data/demo_train.jsonl, max_seq_len: 64}}
{lora}training:
  max_steps: {steps}
  batch_size: 8
  lr: {lr}
  warmup_steps: 1
  seed: 3
checkpoint: {{output_dir: runs/e2e_{method}, save_every_n_steps: {save_every}}}
logging: {{every_n_steps: 1}}
"""
LORA = "lora: {rank: 16, alpha: 32, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}\n"


def make_recipe(method: str, steps: int, save_every: int, lr: float) -> tuple[Path, Path]:
    lora = LORA if method == "lora" else ""
    spec = Path(f"{method}.yaml")
    spec.write_text(
        SPEC.format(method=method, lora=lora, steps=steps, save_every=save_every, lr=lr)
    )
    result = tunegen_in_process("new", "--spec", str(spec))
    assert result.returncode == 0, result.stderr
    return Path(f"generated/e2e_{method}.py"), Path(f"generated/e2e_{method}.yaml")


def test_lora_trains_30_steps_with_falling_loss_and_adapter_checkpoint(demo_workdir):
    recipe, _ = make_recipe("lora", steps=30, save_every=100, lr=3e-3)
    run_recipe_subprocess(recipe)  # one run as users start it: `python recipe.py --config ...`
    run = Path("runs/e2e_lora")
    by_step = losses(run / "metrics.jsonl")
    assert sorted(by_step) == list(range(1, 31))
    first, last = (
        sum(by_step[s] for s in range(1, 6)) / 5,
        sum(by_step[s] for s in range(26, 31)) / 5,
    )
    assert last < first - 0.5, (first, last)
    checkpoint = run / "step_000030"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "adapter.safetensors",
        "checkpoint.json",
        "config.yaml",
        "recipe_state.pt",
    ]
    adapter = load_file(checkpoint / "adapter.safetensors")
    assert adapter and all(".lora_a." in k or ".lora_b." in k for k in adapter)


def test_full_resume_continues_with_identical_steps_and_losses(demo_workdir):
    recipe, _ = make_recipe("full", steps=12, save_every=6, lr=1e-3)
    run_recipe(recipe)
    uninterrupted = losses(Path("runs/e2e_full/metrics.jsonl"))
    assert sorted(uninterrupted) == list(range(1, 13))

    # A run that was stopped right after its step-6 checkpoint, then resumed.
    interrupted = Path("runs/interrupted")
    interrupted.mkdir(parents=True)
    shutil.copytree("runs/e2e_full/step_000006", interrupted / "step_000006")
    out = run_recipe(
        recipe,
        "checkpointer.output_dir=runs/interrupted",  # the metrics and exports follow it
        "training.resume=auto",
    )
    assert "resumed from" in out.stdout
    resumed = losses(interrupted / "metrics.jsonl")
    assert sorted(resumed) == list(range(7, 13))
    assert resumed == {step: uninterrupted[step] for step in range(7, 13)}
    final_a = load_file("runs/e2e_full/step_000012/model.safetensors")
    final_b = load_file(interrupted / "step_000012" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all((final_a[k] == final_b[k]).all() for k in final_a)


def test_existing_run_dir_is_never_overwritten_without_resume(demo_workdir):
    recipe, _ = make_recipe("full", steps=2, save_every=100, lr=1e-3)
    run_recipe(recipe)
    again = run_recipe(recipe, expect=2)
    assert "already holds checkpoints" in again.stderr
    assert "Traceback" not in again.stderr


def test_activation_checkpointing_and_profiler(demo_workdir):
    plain, _ = make_recipe("full", steps=5, save_every=100, lr=1e-3)
    run_recipe(plain)
    spec = Path("full.yaml")
    spec.write_text(
        spec.read_text()
        .replace("name: e2e_full", "name: e2e_ac")
        .replace("runs/e2e_full", "runs/e2e_ac")
        .replace("  seed: 3", "  seed: 3\n  activation_checkpointing: true")
        + "profiler: {wait_steps: 1, warmup_steps: 1, active_steps: 2}\n"
    )
    assert tunegen_in_process("new", "--spec", str(spec)).returncode == 0
    recipe = Path("generated/e2e_ac.py")
    assert "enable_activation_checkpointing(model)" in recipe.read_text()
    run_recipe(recipe)
    # Recomputing activations changes memory, not results.
    checkpointed = losses(Path("runs/e2e_ac/metrics.jsonl"))
    baseline = losses(Path("runs/e2e_full/metrics.jsonl"))
    assert checkpointed.keys() == baseline.keys()
    assert all(abs(checkpointed[s] - baseline[s]) < 1e-5 for s in baseline)
    profile = Path("runs/e2e_ac/profile")
    assert (profile / "trace.json").stat().st_size > 1000
    assert "aten::" in (profile / "key_averages.txt").read_text()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(demo_workdir):
    recipe, _ = make_recipe("full", steps=12, save_every=2, lr=1e-3)
    # An absurd learning rate blows the weights up within a few steps.
    result = run_recipe(recipe, absurd_optimizer(), expect=2)
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "the loss is nan" in message[0], message
    failed_step = int(message[0].split("step ")[1].split(":")[0])
    saved = sorted(p.name for p in Path("runs/e2e_full").glob("step_*"))
    assert saved and int(saved[-1].removeprefix("step_")) < failed_step
    assert not Path("runs/e2e_full/hf_model").exists()
