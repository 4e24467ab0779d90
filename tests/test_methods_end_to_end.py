"""Each method's built-in spec compiles to a recipe that trains the tiny model and shows its signal.

full/lora/dora/qlora: the loss falls; dpo: reward margin and preference accuracy rise; kd: the
student's KL to the teacher falls. The runs are short (tens of steps) and use the example specs
as shipped, with only the step count and logging overridden.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import SPECS, read_metrics, run_recipe, tunegen_in_process

from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.models import tiny
from tunegen.runtime.tokenizers import builtin_tokenizer

# Every test here trains (in this process, through `tunegen run`): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


@pytest.fixture
def specs_dir(workdir: Path) -> Path:
    """workdir/specs holding the built-in specs and their data, as in the repository."""
    shutil.copytree(SPECS, workdir / "specs")
    return workdir / "specs"


@pytest.fixture
def demo_model(specs_dir: Path) -> Path:
    """Where the dpo and kd specs expect the demo's trained model: here a random tiny model (a
    seed unlike the student's), exported as the demo would, tokenizer included."""
    torch.manual_seed(123)
    folder = specs_dir.parent / "runs" / "demo" / "hf_model"
    return save_hf_checkpoint(tiny(), folder, tokenizer=builtin_tokenizer("tiny"))


def compile_and_run(spec: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Compile `spec` and run its recipe, logging every step into runs/<name>; it must succeed."""
    made = tunegen_in_process("new", "--spec", str(spec))
    assert made.returncode == 0, made.stderr
    name = spec.stem
    return run_recipe(
        f"generated/{name}.py",
        *("logging.every_n_steps=1", f"checkpointer.output_dir=runs/{name}", *overrides),
    )


def train(spec: Path, *overrides: str) -> list[dict]:
    """Run `spec`'s recipe with `overrides`; return the logged training rows."""
    compile_and_run(spec, *overrides)
    metrics = read_metrics(Path(f"runs/{spec.stem}/metrics.jsonl"))
    return [row for row in metrics if "loss" in row]


def mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)


@pytest.mark.parametrize("method", ["dora", "qlora"])
def test_adapter_methods_lower_the_loss(specs_dir: Path, method: str) -> None:
    rows = train(specs_dir / f"{method}.yaml", "training.max_steps=40", "training.warmup_steps=5")
    assert len(rows) == 40
    assert mean(rows[-8:], "loss") < 0.8 * mean(rows[:8], "loss")


def test_qlora_reports_the_quantized_base_and_exports_an_adapter(specs_dir: Path) -> None:
    run = compile_and_run(
        specs_dir / "qlora.yaml", "training.max_steps=2", "training.warmup_steps=0"
    )
    assert "NF4:" in run.stdout
    assert (Path("runs/qlora/peft_adapter") / "adapter_config.json").is_file()


def preference_subset(specs_dir: Path, n: int = 32) -> str:
    """The first n pairs of the demo preference set: seen many times in a short run, they let
    the untrained tiny model show the DPO signal within tens of steps."""
    lines = (specs_dir / "data/demo_preference.jsonl").read_text().splitlines()[:n]
    (specs_dir / "data/subset.jsonl").write_text("\n".join(lines) + "\n")
    return "dataset.source=specs/data/subset.jsonl"


def test_dpo_raises_the_reward_margin_and_accuracy(specs_dir: Path, demo_model: Path) -> None:
    rows = train(
        specs_dir / "dpo.yaml",
        preference_subset(specs_dir),
        "training.epochs=20",
        "training.max_steps=40",
    )
    first, last = rows[:8], rows[-8:]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference
    assert mean(last, "rewards/margin") > mean(first, "rewards/margin") + 0.05
    assert mean(last, "rewards/accuracy") > mean(first, "rewards/accuracy")
    assert mean(last, "rewards/accuracy") >= 0.75
    assert mean(last, "loss") < mean(first, "loss")


def test_full_dpo_with_ipo_raises_the_margin(specs_dir: Path, demo_model: Path) -> None:
    spec = specs_dir / "dpo.yaml"
    spec.write_text(
        spec.read_text()
        .replace("use_lora: true", "use_lora: false")
        .replace("loss_type: sigmoid", "loss_type: ipo")
        .replace("lora: {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj]}\n", "")
        .replace("lr: 2.0e-3", "lr: 3.0e-4")
    )
    rows = train(spec, preference_subset(specs_dir), "training.epochs=20", "training.max_steps=30")
    assert mean(rows[-6:], "rewards/margin") > mean(rows[:6], "rewards/margin")
    assert mean(rows[-6:], "loss") < mean(rows[:6], "loss")


def test_kd_lowers_the_students_kl_to_the_teacher(specs_dir: Path, demo_model: Path) -> None:
    rows = train(specs_dir / "kd.yaml", "training.max_steps=30", "training.kd_weight=0.9")
    assert mean(rows[-6:], "kl_to_teacher") < 0.7 * mean(rows[:6], "kl_to_teacher")
    assert Path("runs/kd/hf_model/config.json").is_file()


def test_kd_refuses_a_teacher_with_another_vocabulary(specs_dir: Path) -> None:
    from tunegen.runtime.models import llama

    teacher = llama(
        vocab_size=600, dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=128, max_seq_len=64
    )
    save_hf_checkpoint(teacher, specs_dir.parent / "runs" / "demo" / "hf_model")
    made = tunegen_in_process("new", "--spec", str(specs_dir / "kd.yaml"))
    assert made.returncode == 2
    assert "kd.teacher: the teacher's vocabulary has 600 tokens, the student's 512" in made.stderr
