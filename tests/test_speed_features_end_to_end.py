"""Speed features end to end (issue 18): compiled from a spec, trained, resumed exactly.

- each golden combination of the speed features trains a few steps of the tiny model and logs
  what it should (the compile time, the run length in token-budget batches);
- a token-budget run killed with SIGKILL resumes with the uninterrupted run's losses and
  weights (a subprocess, as in tests/test_kill_and_resume.py);
- regional compile gives eager mode's losses;
- `tunegen validate` says in one line when torch.compile has no C++ compiler to use.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from combinations import GOLDEN_ONLY, combination_spec
from helpers import losses, tunegen_in_process
from safetensors.torch import load_file

from tunegen.runtime.compiling import compile_blocks, is_compiled
from tunegen.runtime.losses import CrossEntropyLoss
from tunegen.runtime.models import llama

SPEED = (
    "full_optimizer_in_bwd_compile",
    "lora_token_budget_chunked_loss",
    "full_packed_chunked_loss",
)


def compile_spec(name: str, settings: dict, steps: int, save_every: int | None = None) -> None:
    Path(f"{name}.yaml").write_text(
        yaml.safe_dump(combination_spec(name, settings, steps, save_every), sort_keys=False)
    )
    made = tunegen_in_process("new", "--spec", f"{name}.yaml")
    assert made.returncode == 0, made.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEED)
def test_speed_combination_trains_and_logs_what_it_did(name: str, demo_workdir: Path) -> None:
    compile_spec(name, GOLDEN_ONLY[name], steps=3)
    ran = tunegen_in_process("run", f"generated/{name}.py", "logging.progress=lines")
    assert ran.returncode == 0, ran.stderr
    steps = losses(Path(f"runs/{name}/metrics.jsonl"))
    assert sorted(steps) == [1, 2, 3] and all(0 < loss < 20 for loss in steps.values())
    text = (Path(f"runs/{name}/metrics.jsonl")).read_text() + ran.stdout + ran.stderr
    if "compile" in name:
        assert "compiled 4 blocks in " in text
    if "token_budget" in name:
        assert "2 batches of up to 256 tokens per step" in text
    if "packed" in name:
        assert "packed rows of 64 tokens per step" in text


KILLED = {
    "method": "lora",
    "lora": {"rank": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]},
    "training": {"tokens_per_batch": 192, "lr": 3.0e-3, "seed": 5},
}


def start(output_dir: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "generated/budget.py", "--config", "generated/budget.yaml"]
    return subprocess.Popen(
        [*argv, f"checkpointer.output_dir={output_dir}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_a_token_budget_run_then_resume_auto_gives_identical_losses_and_weights(
    demo_workdir: Path,
) -> None:
    total = 16
    compile_spec("budget", KILLED, steps=total, save_every=4)
    reference = start("runs/reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    run = Path("runs/sigkill")
    victim = start(str(run))
    while not run.joinpath("metrics.jsonl").exists() or len(losses(run / "metrics.jsonl")) < 6:
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)  # after the step-4 checkpoint, before the end
    victim.wait()
    assert len(losses(run / "metrics.jsonl")) < total
    resumed = start(str(run), "training.resume=auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected = losses(Path("runs/reference/metrics.jsonl"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in records if "loss" in row]
    assert steps == list(range(1, total + 1))
    assert all(row["loss"] == expected[row["step"]] for row in records if "loss" in row)
    a = load_file(f"runs/reference/step_{total:06d}/adapter.safetensors")
    b = load_file(run / f"step_{total:06d}" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_regional_compile_gives_the_eager_losses() -> None:
    def losses_of(compiled: bool) -> list[float]:
        torch.manual_seed(0)
        model = llama(
            vocab_size=64,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=48,
            max_seq_len=16,
        )
        if compiled:
            assert compile_blocks(model) == 2
            assert all(is_compiled(layer) for layer in model.model.layers)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        result = []
        for step in range(3):
            tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(step))
            loss, count = CrossEntropyLoss()(model(tokens), tokens)
            (loss / count).backward()
            optimizer.step()
            optimizer.zero_grad()
            result.append(loss.item() / int(count))
        # Names are those of eager mode: checkpoints of a compiled run load anywhere.
        assert all("_orig_mod" not in key for key in model.state_dict())
        return result

    torch.testing.assert_close(losses_of(True), losses_of(False), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_blocks_on_packed_rows_compile_once_and_give_the_eager_gradients() -> None:
    """Packed rows on CPU attend per document in a Python loop over the row's spans; compiled
    blocks must leave that loop out of their graph, or every new layout compiles again."""
    from torch._dynamo.utils import counters

    def packed(lengths: tuple[int, ...]) -> dict[str, torch.Tensor]:
        ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        return {"position_ids": positions, "document_ids": ids}

    layouts = [(10, 22, 32), (5, 59), (30, 30, 4), (1, 63)]
    tokens = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(0))
    graphs, gradients = [], {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = llama(
            vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
            max_seq_len=64,
        )  # fmt: skip
        if compiled:
            torch._dynamo.reset()
            compile_blocks(model)
        for layout in layouts:
            loss, count = CrossEntropyLoss()(model(tokens, **packed(layout)), tokens)
            (loss / count).backward()
            if compiled:
                graphs.append(counters["stats"]["unique_graphs"])
        gradients[compiled] = [p.grad for p in model.parameters()]
    assert graphs[0] > 0 and graphs == [graphs[0]] * len(layouts), graphs  # no recompiles
    for eager, compiled in zip(gradients[False], gradients[True], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_validate_says_in_one_line_when_compile_has_no_cpp_compiler(
    demo_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_spec("fast", {"method": "full", "training": {"compile": True}}, steps=1)
    monkeypatch.setattr("shutil.which", lambda name: None)
    made = tunegen_in_process("validate", "fast.yaml")
    assert made.returncode == 2
    assert made.stderr.strip().splitlines() == [
        "error: fast.yaml:12: training.compile: torch.compile on CPU needs a C++ compiler "
        "(g++ or clang++) on PATH; install one or set training.compile: false"
    ]
    made = tunegen_in_process("validate", "generated/fast.yaml")
    assert made.returncode == 2
    assert made.stderr.strip().splitlines() == [
        "error: generated/fast.py: torch.compile on CPU needs a C++ compiler (g++ or clang++) "
        "on PATH; install one, or compile the spec with training.compile: false"
    ]
