"""GRPO end to end on the tiny model: it learns what its reward asks for, the KL to its reference is
zero at step 1, and a run killed mid-way resumes with the same rewards and losses.

The learning test starts, as GRPO usually does, from a short SFT of the demo data (so completions
are words that end), then rewards one-word answers: a property the SFT model has on some tasks
(first / last word) and not on others (reverse, sort), so groups disagree and GRPO has signal.
The mean reward on held-out prompts is measured on both exported models, with the same sampling
seed. The 50-step run after the full demo SFT is a manual check (docs/grpo.md).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SPECS, read_metrics, tunegen_in_process

from tunegen.runtime.data.prompts import PromptDataset, prompt_collate
from tunegen.runtime.generation import sample
from tunegen.runtime.hf_checkpoint import load_model
from tunegen.runtime.rewards import RewardFunctions
from tunegen.runtime.tokenizers import load_tokenizer

pytestmark = pytest.mark.slow

REWARDS = '''
def one_word(prompts, completions, **fields):
    """1.0 for an answer of exactly one word."""
    return [float(len(c.split()) == 1) for c in completions]
'''


def _spec(name: str, **settings) -> dict:
    spec = {
        "name": name,
        "method": "grpo",
        "model": "tiny",
        "data": {"path": "data/grpo_prompts.jsonl", "format": "prompts", "max_seq_len": 128},
        "grpo": {"group_size": 4, "max_new_tokens": 8, "beta": 0.04},
        "reward": ["rewards.py:one_word"],
        "training": {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "scheduler": "constant"},
        "checkpoint": {"output_dir": f"runs/{name}"},
        "logging": {"every_n_steps": 1, "progress": "lines"},
    }
    for key, value in settings.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(SPECS / "data", tmp_path / "data")
    (tmp_path / "rewards.py").write_text(REWARDS)
    return tmp_path


def _compile(project: Path, spec: dict) -> Path:
    path = project / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = tunegen_in_process("new", "--spec", path.name, cwd=project)
    assert result.returncode == 0, result.stderr
    return project / "generated" / f"{spec['name']}.py"


def _run(project: Path, recipe: Path, *overrides: str) -> list[dict]:
    result = tunegen_in_process("run", str(recipe.relative_to(project)), *overrides, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    return [
        row
        for row in read_metrics(project / "runs" / recipe.stem / "metrics.jsonl")
        if "loss" in row
    ]


def heldout_reward(model_dir: Path, rewards_file: Path, *, prompts: int = 64) -> float:
    """Mean `one_word` reward of sampled answers to the first held-out prompts (seed 0)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).eval()
    data = PromptDataset(
        tokenizer,
        source=SPECS / "data" / "grpo_heldout.jsonl",
        template="alpaca",
        max_seq_len=128,
        max_new_tokens=8,
    )
    batch = prompt_collate([data[i] for i in range(prompts)])
    generator = torch.Generator().manual_seed(0)
    completions = sample(
        model,
        batch["prompt_ids"],
        max_new_tokens=8,
        stop_tokens={tokenizer.eos_id},
        pad_id=tokenizer.pad_id,
        generator=generator,
    )
    texts = [tokenizer.decode(ids) for ids in completions]
    reward = RewardFunctions({"one_word": {"path": str(rewards_file), "function": "one_word"}})
    total, _ = reward(batch["prompts"], texts, batch["fields"], step=0)
    return total.mean().item()


def test_reward_rises_after_a_short_sft(project: Path) -> None:
    sft = {
        "name": "sft",
        "method": "full",
        "model": "tiny",
        "data": {"path": "data/demo_train.jsonl", "max_seq_len": 128},
        "training": {"max_steps": 120, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10},
        "checkpoint": {"output_dir": "runs/sft"},
        "logging": {"every_n_steps": 20, "progress": "lines"},
    }
    _run(project, _compile(project, sft))
    start = project / "runs" / "sft" / "hf_model"
    grpo = _spec(
        "grpo",
        model="runs/sft/hf_model",
        grpo={"group_size": 8, "beta": 0.0},
        training={"max_steps": 20, "batch_size": 4, "lr": 5e-4},
    )
    rows = _run(project, _compile(project, grpo))
    before = heldout_reward(start, project / "rewards.py")
    after = heldout_reward(project / "runs" / "grpo" / "hf_model", project / "rewards.py")
    first, last = rows[0]["reward"], sum(r["reward"] for r in rows[-5:]) / 5
    print(
        f"\nheld-out one-word reward: {before:.3f} -> {after:.3f}; train reward {first:.3f} -> {last:.3f}"
    )
    assert after > before + 0.1


def test_kl_is_zero_at_step_one_and_a_killed_run_resumes_exactly(project: Path) -> None:
    spec = _spec("whole", training={"max_steps": 6}, checkpoint={"save_every_n_steps": 2})
    whole = _run(project, _compile(project, spec))
    assert whole[0]["kl"] == 0.0  # step 1 samples from and scores with the initial policy
    assert whole[-1]["kl"] > 0.0
    # The same run, SIGKILLed once its step-2 checkpoint is complete, then resumed.
    recipe = _compile(
        project,
        {
            **spec,
            "name": "killed",
            "checkpoint": {"output_dir": "runs/killed", "save_every_n_steps": 2},
        },
    )
    run_dir = project / "runs" / "killed"
    process = subprocess.Popen(
        [sys.executable, "generated/killed.py", "--config", "generated/killed.yaml"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (run_dir / "step_000002").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    resumed = _run(project, recipe, "training.resume=auto")
    by_step = {row["step"]: row for row in resumed}  # a resumed step's line replaces the first
    for row in whole:
        again = by_step[row["step"]]
        for key in ("loss", "reward", "kl", "completion_length", "rewards/one_word/mean"):
            assert again[key] == row[key], (row["step"], key)
