"""Combinations of methods and features the spec allows compile to recipes that run, and resume.

Each combination trains a few steps of the tiny model; the point is that every branch of the
templates meets every other one somewhere (DoRA in DPO and KD, QLoRA with DoRA and activation
checkpointing, merged QLoRA export, bf16, NaN skipping, evaluation and profiling next to KD).
Resuming from a mid-run checkpoint gives the same losses as the uninterrupted run for the
methods with extra state: DPO's reference, KD's teacher, QLoRA's NF4 base.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from combinations import COMBINATIONS, combination_spec
from helpers import absurd_optimizer, losses, run_recipe, tunegen_in_process

from tunegen.runtime import load_model
from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.models import tiny

# Every test here trains (in this process, through `tunegen run`): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


def write_spec(name: str, settings: dict, steps: int, save_every: int | None = None) -> Path:
    path = Path(f"{name}.yaml")
    spec = combination_spec(name, settings, steps, save_every)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    made = tunegen_in_process("new", "--spec", str(path))
    assert made.returncode == 0, made.stderr
    return path


@pytest.fixture
def teacher(demo_workdir: Path) -> Path:
    torch.manual_seed(7)
    save_hf_checkpoint(tiny(), demo_workdir / "teacher")
    return demo_workdir / "teacher"


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_combination_compiles_and_runs(name: str, teacher: Path) -> None:
    write_spec(name, COMBINATIONS[name], steps=3)
    result = run_recipe(f"generated/{name}.py")
    by_step = losses(Path(f"runs/{name}/metrics.jsonl"))
    assert sorted(by_step) == [1, 2, 3] and all(v == v for v in by_step.values())
    assert "update skipped" not in result.stdout  # nothing was non-finite here
    settings = COMBINATIONS[name]
    if settings.get("checkpoint", {}).get("export_merged"):
        merged = load_model(f"runs/{name}/hf_model")
        assert merged.vocab_size == 512
    if "eval" in settings:
        assert "held-out exact match" in result.stdout
    if "profiler" in settings:
        assert any(Path(f"runs/{name}/profile").iterdir())


@pytest.mark.parametrize(
    "name",
    [
        "dpo_dora",
        "full_packed_activation_checkpointing",
        "kd_lora_dora_eval_profiler",
        "lora_length_buckets",
        "qlora_dora_activation_checkpointing",
    ],
)
def test_resume_gives_the_uninterrupted_losses(name: str, teacher: Path) -> None:
    settings = {k: v for k, v in COMBINATIONS[name].items() if k not in ("eval", "profiler")}
    write_spec(name, settings, steps=6, save_every=3)
    run_recipe(f"generated/{name}.py")
    uninterrupted = losses(Path(f"runs/{name}/metrics.jsonl"))
    Path("runs/resumed").mkdir()
    shutil.copytree(f"runs/{name}/step_000003", "runs/resumed/step_000003")
    run_recipe(
        f"generated/{name}.py", "checkpointer.output_dir=runs/resumed", "training.resume=auto"
    )
    resumed = losses(Path("runs/resumed/metrics.jsonl"))
    assert resumed == {step: uninterrupted[step] for step in (4, 5, 6)}


def test_a_nonfinite_step_is_skipped_when_the_spec_says_so(demo_workdir: Path) -> None:
    write_spec("skipper", {"method": "full", "training": {"on_nonfinite_loss": "skip"}}, steps=3)

    recipe = "generated/skipper.py"
    # lr=1e30 (a user optimizer) wrecks the weights at step 1, so the losses after it are not finite: those
    # updates are skipped and the run ends normally.
    short = run_recipe(recipe, absurd_optimizer(), "checkpointer.output_dir=runs/short")
    assert "step 3: loss nan, update skipped" in short.stdout
    # A loss that stays non-finite is a diverged run: after 10 skipped steps in a row it stops.
    long = run_recipe(
        recipe,
        absurd_optimizer(),
        "training.max_steps=30",
        "checkpointer.output_dir=runs/long",
        expect=2,
    )
    assert "for 11 steps in a row" in long.stderr and long.stderr.count("\n") == 1
