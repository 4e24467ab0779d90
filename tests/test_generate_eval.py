"""`tunegen generate` and `tunegen eval` through the CLI, on checkpoints, adapters and run dirs."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_in_process

from tunegen.runtime import load_model, save_hf_checkpoint
from tunegen.runtime.data import InstructDataset
from tunegen.runtime.generation import generate
from tunegen.runtime.lora import apply_lora
from tunegen.runtime.model_loading import load_trained_model
from tunegen.runtime.peft_export import save_peft_adapter
from tunegen.runtime.tokenizers import builtin_tokenizer

SPECS = Path(__file__).resolve().parents[1] / "specs"
HELDOUT = SPECS / "data" / "demo_heldout.jsonl"


def lively_tiny() -> torch.nn.Module:
    """The tiny model with larger random weights, so greedy outputs vary."""
    torch.manual_seed(0)
    model = load_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.15)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A run dir holding only an `hf_model/` export (with the tiny tokenizer)."""
    run = tmp_path_factory.mktemp("run")
    save_hf_checkpoint(lively_tiny(), run / "hf_model", tokenizer=builtin_tokenizer("tiny"))
    return run


def test_generate_prompt_streams_the_greedy_tokens(hf_dir: Path) -> None:
    model, tokenizer = load_model(hf_dir / "hf_model"), builtin_tokenizer("tiny")
    ids = tokenizer.encode("The cat", add_bos=True, add_eos=False)
    expected = tokenizer.decode(generate(model, ids, max_new_tokens=12, stop_tokens={2}))
    assert expected.strip()
    for where in (hf_dir, hf_dir / "hf_model"):
        status, out, err = cli_in_process(
            "generate", str(where), "--prompt", "The cat", "--max-new-tokens", "12",
            "--temperature", "0",
        )  # fmt: skip
        assert (status, err) == (0, "")
        assert out == expected + "\n"


def test_generate_samples_by_seed(hf_dir: Path) -> None:
    def run(seed: str) -> str:
        args = ["generate", str(hf_dir), "--prompt", "The", "--max-new-tokens", "16"]
        status, out, _ = cli_in_process(*args, "--temperature", "1.5", "--seed", seed)
        assert status == 0
        return out

    assert run("1") == run("1")
    assert run("1") != run("2")


def test_chat_reads_turns_until_exit(hf_dir: Path, monkeypatch) -> None:
    """--chat: each stdin line is a turn, formatted by the template; /exit ends."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a colour.\n\nAnd another.\n/exit\nlost\n"))
    status, out, err = cli_in_process(
        "generate", str(hf_dir), "--chat", "--template", "plain", "--temperature", "0",
        "--max-new-tokens", "8",
    )  # fmt: skip
    assert status == 0, err
    assert "instruct template, single-turn plain" in err
    model, tokenizer = load_model(hf_dir / "hf_model"), builtin_tokenizer("tiny")

    def answer(turn: str) -> str:  # plain instruct template, single-turn: the turn alone
        ids = tokenizer.encode(f"{turn}\n", add_bos=True, add_eos=False)
        return tokenizer.decode(generate(model, ids, max_new_tokens=8, stop_tokens={2}))

    def turn(text: str) -> str:  # a piped session echoes each turn; an empty reply says so
        reply = answer(text)
        return f"> {text}\n{reply or '(empty reply: the model ended its turn at once)'}\n"

    # Two answers: the empty line and what follows /exit are not turns.
    assert out == turn("Name a colour.") + turn("And another.")


def test_loads_a_peft_adapter_run_and_its_latest_step(tmp_path: Path) -> None:
    """An adapter export (base tiny) loads to the same function as the model it was saved from."""
    model = lively_tiny()
    apply_lora(model, targets=["q_proj", "v_proj"], rank=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(std=0.2)
    save_peft_adapter(model, tmp_path / "run" / "peft_adapter", base_model="tiny")
    loaded = load_trained_model(tmp_path / "run")
    tokens = torch.randint(3, 500, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), model.eval()(tokens), atol=1e-5, rtol=0)
    assert loaded.source.endswith(
        "peft_adapter (base " + str(tmp_path / "run" / "peft_adapter" / "base_model") + ")"
    )


def separately_computed_loss(model: torch.nn.Module, source: Path) -> float:
    """Token-weighted mean cross-entropy over the answer tokens, by hand, one sample at a time."""
    tokenizer = builtin_tokenizer("tiny")
    dataset = InstructDataset(tokenizer, source=source, template="alpaca", max_seq_len=512)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            tokens = torch.tensor(dataset[i]["tokens"])
            labels = torch.tensor(dataset[i]["labels"])
            logits = model(tokens[None])[0, :-1]  # (T-1, V) predicts tokens 1..T-1
            targets = labels[1:]
            keep = targets != -100
            total += float(
                torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            )
            count += int(keep.sum())
    return total / count


def test_eval_perplexity_is_exp_of_the_loss_and_json(hf_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "held.jsonl"
    data.write_text("".join(HELDOUT.read_text().splitlines(keepends=True)[:12]))
    status, out, err = cli_in_process("eval", str(hf_dir), "--data", str(data), "--json")
    assert (status, err) == (0, "")
    report = json.loads(out)
    loss = separately_computed_loss(load_model(hf_dir / "hf_model").eval(), data)
    assert report["loss"] == pytest.approx(loss, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert (report["format"], report["template"], report["samples"]) == ("instruct", "alpaca", 12)
    assert report["exact_match"] == 0.0 and report["exact_match_samples"] == 12
    status, out, _ = cli_in_process("eval", str(hf_dir), "--data", str(data), "--max-samples", "3")
    assert status == 0
    assert "(instruct, template alpaca; 3 samples)" in out.splitlines()[0]
    assert out.splitlines()[1].startswith("  perplexity ")
    assert "exact match  0.0%  (0 of 3, greedy)" in out


def test_eval_exact_match_counts_right_answers(hf_dir: Path, tmp_path: Path) -> None:
    """Records whose reference is the model's own greedy answer count as right."""
    model, tokenizer = load_model(hf_dir / "hf_model"), builtin_tokenizer("tiny")
    records = []
    for i, instruction in enumerate(["Say a word.", "Count.", "Name a fruit.", "Go on."]):
        prompt = f"{instruction}\n"
        ids = tokenizer.encode(prompt, add_bos=True, add_eos=False)
        answer = tokenizer.decode(generate(model, ids, max_new_tokens=6, stop_tokens={2}))
        records.append({"instruction": instruction, "output": answer if i < 3 else "nope"})
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["eval", str(hf_dir), "--data", str(data), "--template", "plain", "--json"]
    status, out, err = cli_in_process(*args, "--max-new-tokens", "6")
    assert status == 0, err
    assert json.loads(out)["exact_match"] == 0.75


def test_lm_eval_tasks_without_lm_eval_name_the_install(monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a)
    )
    status, out, err = cli_in_process("eval", "tiny", "--lm-eval-tasks", "arc_easy")
    assert (status, out) == (2, "")
    assert err == (
        "error: --lm-eval-tasks needs lm-evaluation-harness: pip install lm-eval"
        " (or pip install tunegen[lm-eval])\n"
    )


@pytest.mark.slow
def test_a_lora_run_loads_from_its_adapter_and_from_its_latest_step(tmp_path: Path) -> None:
    """A real 1-step LoRA run: the run dir loads its peft_adapter/; without it, the step_*
    checkpoint rebuilt from the saved config gives the same model."""
    from helpers import tunegen_in_process

    assert tunegen_in_process("new", "--spec", "lora", cwd=tmp_path).returncode == 0
    ran = tunegen_in_process(
        "run", "generated/lora.py", "training.max_steps=1", "training.batch_size=2", cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    run = tmp_path / "runs" / "lora"
    tokens = torch.randint(3, 500, (2, 16))
    exported = load_trained_model(run)
    assert exported.source.startswith(str(run / "peft_adapter"))
    with torch.no_grad():
        expected = exported.model(tokens)
    import shutil

    shutil.rmtree(run / "peft_adapter")
    from_step = load_trained_model(run)
    assert from_step.source == str(run / "step_000001")
    with torch.no_grad():
        torch.testing.assert_close(from_step.model(tokens), expected, atol=1e-5, rtol=0)
    status, out, err = cli_in_process(
        "eval", str(run), "--data", str(HELDOUT), "--max-samples", "4", "--json"
    )
    assert status == 0, err
    report = json.loads(out)
    assert (report["format"], report["template"], report["samples"]) == ("instruct", "alpaca", 4)
