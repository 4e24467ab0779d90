"""Validation during training, end to end on the tiny model (in-process `tunegen run`).

The logged validation metrics are checked against the same quantities computed here, sample by
sample (no batching, no padding), from the checkpoint of the step they were logged at: SFT's
token-weighted loss, DPO's loss, reward accuracy and margin, KD's cross-entropy and KL. Also:
`checkpoint.keep_best` keeps the step with the lowest logged `val_loss`, and validating never
changes the training run (same losses with dropout on, with or without validation).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import losses, read_metrics, tunegen_in_process

from tunegen.runtime import load_model
from tunegen.runtime.checkpointing import Checkpointer, load_weights_into
from tunegen.runtime.config import instantiate, load_config
from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.lora import apply_lora, disable_adapters
from tunegen.runtime.models import tiny
from tunegen.runtime.tokenizers.sentencepiece import builtin_tokenizer_path
from tunegen.runtime.validation import split_off

pytestmark = pytest.mark.slow  # each test trains a few steps


def compile_and_run(spec: dict, *overrides: str) -> Path:
    """Write `spec` as spec.yaml, compile it and run its recipe; the run dir."""
    Path("spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    name = spec["name"]
    made = tunegen_in_process("new", "--spec", "spec.yaml", "--force")
    assert made.returncode == 0, made.stderr
    ran = tunegen_in_process("run", f"generated/{name}.py", *overrides)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return Path("runs", name)


def val_records(run_dir: Path) -> dict[int, dict]:
    """step -> the validation record logged at that step."""
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r}


def config_data(name: str) -> tuple:
    """(config, tokenizer, training dataset) of generated/<name>.yaml, built as the recipe does."""
    cfg = load_config(f"generated/{name}.yaml")
    tokenizer = instantiate(cfg.tokenizer)
    return cfg, tokenizer, instantiate(cfg.dataset, tokenizer=tokenizer)


def token_logps(model: torch.nn.Module, tokens: list[int], labels: list[int]) -> torch.Tensor:
    """Log-probabilities of one unpadded sample's label tokens (the next-token ones)."""
    logits = model(torch.tensor([tokens]))[0, :-1].float()  # (T-1, V)
    targets = torch.tensor(labels[1:])
    keep = targets != -100
    return logits.log_softmax(-1)[keep].gather(1, targets[keep, None]).squeeze(1)


# -- SFT: the loss on the held-out split, and the best step -------------------------------------


def test_val_loss_is_the_models_loss_on_the_split_and_keep_best_keeps_its_lowest(
    demo_workdir: Path,
) -> None:
    spec = {
        "name": "val",
        "method": "full",
        "model": "tiny",
        "data": {"path": "data/demo_train.jsonl", "max_seq_len": 64, "val_split": 0.005},
        "training": {"max_steps": 6, "batch_size": 4, "lr": 3e-3, "val_every_n_steps": 2},
        "checkpoint": {"keep_best": "val_loss", "save_every_n_steps": 2},
    }
    run_dir = compile_and_run(spec)
    logged = val_records(run_dir)
    assert sorted(logged) == [2, 4, 6]

    _, _, dataset = config_data("val")
    _, held_out = split_off(dataset, fraction=0.005, seed=0)
    assert len(held_out) == 20
    model = tiny().eval()
    checkpointer = Checkpointer(output_dir=run_dir, keep_best="val_loss")
    for step, record in logged.items():
        weights, _ = checkpointer.load(run_dir / f"step_{step:06d}")
        load_weights_into(model, weights)
        with torch.no_grad():
            logps = [token_logps(model, s["tokens"], s["labels"]) for s in held_out]
        expected = -torch.cat(logps).sum().item() / sum(len(lp) for lp in logps)
        assert record["val_loss"] == pytest.approx(expected, rel=1e-5), step

    best_step = min(logged, key=lambda s: logged[s]["val_loss"])
    assert checkpointer.best() == (best_step, logged[best_step]["val_loss"])
    best, _ = checkpointer.load(run_dir / "best")
    kept, _ = checkpointer.load(run_dir / f"step_{best_step:06d}")
    assert all(torch.equal(best[k], kept[k]) for k in kept)


def test_keep_best_survives_keep_last(demo_workdir: Path) -> None:
    spec = {
        "name": "pruned",
        "method": "lora",
        "model": "tiny",
        "data": {"path": "data/demo_train.jsonl", "max_seq_len": 64, "val_split": 0.002},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "val_every_n_steps": 1},
        "checkpoint": {"keep_best": "val_loss", "save_every_n_steps": 1, "keep_last": 1},
    }
    run_dir = compile_and_run(spec)
    logged = val_records(run_dir)
    best_step = min(logged, key=lambda s: (logged[s]["val_loss"], s))
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000004"]
    assert Checkpointer(output_dir=run_dir, keep_best="val_loss").best()[0] == best_step


# -- validating changes nothing in training ------------------------------------------------------


def test_validation_leaves_the_training_run_unchanged(demo_workdir: Path) -> None:
    """With LoRA dropout on (training draws random numbers every step), a run that validates
    every step trains exactly as one that never validates."""
    spec = {
        "name": "same",
        "method": "lora",
        "model": "tiny",
        "lora": {"dropout": 0.2},
        "data": {"path": "data/demo_train.jsonl", "max_seq_len": 64},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 3e-3},
        "checkpoint": {"export_hf": False},
    }
    plain = losses(compile_and_run(spec) / "metrics.jsonl")
    spec["name"] = "same_val"
    spec["data"] = {**spec["data"], "val_path": "data/demo_heldout.jsonl"}
    spec["training"] = {**spec["training"], "val_every_n_steps": 1, "val_max_batches": 2}
    run_dir = compile_and_run(spec)
    assert losses(run_dir / "metrics.jsonl") == plain
    assert sorted(val_records(run_dir)) == [1, 2, 3, 4]


# -- DPO and KD ----------------------------------------------------------------------------------


@pytest.fixture
def base(demo_workdir: Path) -> Path:
    """A fixed tiny checkpoint dir with its tokenizer (the DPO reference / the KD teacher)."""
    torch.manual_seed(7)
    save_hf_checkpoint(tiny(), demo_workdir / "base")
    shutil.copyfile(builtin_tokenizer_path("tiny"), demo_workdir / "base" / "tokenizer.model")
    return demo_workdir / "base"


def test_dpo_validation_loss_reward_accuracy_and_margin(base: Path) -> None:
    spec = {
        "name": "dpo_val",
        "method": "dpo",
        "model": "base",
        "data": {
            "path": "data/demo_preference.jsonl",
            "format": "preference",
            "max_seq_len": 64,
            "val_split": 0.01,
        },
        "training": {"max_steps": 2, "batch_size": 2, "lr": 3e-3},
    }
    run_dir = compile_and_run(spec)
    record = val_records(run_dir)[2]
    cfg, _, dataset = config_data("dpo_val")
    _, held_out = split_off(dataset, fraction=0.01, seed=0)
    model = load_model("base")
    apply_lora(model, targets=list(cfg.lora.targets), rank=cfg.lora.rank, alpha=cfg.lora.alpha)
    weights, _ = Checkpointer(output_dir=run_dir).load(
        run_dir / "step_000002", filename="adapter.safetensors"
    )
    load_weights_into(model, weights, strict=False)
    model.eval()
    beta = cfg.loss.beta
    chosen, rejected, pair_losses = [], [], []
    with torch.no_grad():
        for pair in held_out:
            rewards = []
            for side in ("chosen", "rejected"):
                tokens, labels = pair[f"{side}_tokens"], pair[f"{side}_labels"]
                policy = token_logps(model, tokens, labels).sum()
                with disable_adapters(model):
                    reference = token_logps(model, tokens, labels).sum()
                rewards.append(beta * (policy - reference).item())
            chosen.append(rewards[0])
            rejected.append(rewards[1])
            pair_losses.append(-F.logsigmoid(torch.tensor(rewards[0] - rewards[1])).item())
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert record["val_loss"] == pytest.approx(sum(pair_losses) / len(held_out), rel=1e-4)
    assert record["val_rewards/accuracy"] == sum(m > 0 for m in margins) / len(margins)
    assert record["val_rewards/margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    assert record["val_rewards/chosen"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-5)


def test_kd_validation_cross_entropy_and_kl(base: Path) -> None:
    spec = {
        "name": "kd_val",
        "method": "kd",
        "model": "tiny",
        "kd": {"teacher": "base", "temperature": 2.0, "weight": 0.25},
        "data": {
            "path": "data/demo_train.jsonl",
            "max_seq_len": 64,
            "val_path": "data/demo_heldout.jsonl",
        },
        "training": {"max_steps": 2, "batch_size": 4, "lr": 3e-3, "val_max_batches": 2},
        "checkpoint": {"export_hf": False},
    }
    run_dir = compile_and_run(spec)
    record = val_records(run_dir)[2]
    cfg = load_config("generated/kd_val.yaml")
    val_set = instantiate(cfg.val_dataset, tokenizer=instantiate(cfg.tokenizer))
    samples = [val_set[i] for i in range(8)]  # 2 batches of 4, in file order
    student = tiny().eval()
    weights, _ = Checkpointer(output_dir=run_dir).load(run_dir / "step_000002")
    load_weights_into(student, weights)
    teacher = load_model("base").eval()
    ce_sum, kl_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for sample in samples:
            tokens, labels = torch.tensor([sample["tokens"]]), torch.tensor(sample["labels"])
            keep = labels[1:] != -100
            s_logits = student(tokens)[0, :-1][keep].float()
            t_logits = teacher(tokens)[0, :-1][keep].float()
            ce_sum += F.cross_entropy(s_logits, labels[1:][keep], reduction="sum").item()
            t_logp = (t_logits / 2.0).log_softmax(-1)
            s_logp = (s_logits / 2.0).log_softmax(-1)
            kl_sum += 4.0 * (t_logp.exp() * (t_logp - s_logp)).sum().item()
            count += int(keep.sum())
    assert record["val_ce_loss"] == pytest.approx(ce_sum / count, rel=1e-5)
    assert record["val_kl_to_teacher"] == pytest.approx(kl_sum / count, rel=1e-4)
    expected = (0.75 * ce_sum + 0.25 * kl_sum) / count
    assert record["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(record["val_loss"])
