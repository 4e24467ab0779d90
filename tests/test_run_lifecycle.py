"""A run's life through the CLI, as a user types it: refused reruns, extending a finished run,
resuming with a changed config, the run length line, throughput, and the exported adapter.

One tiny LoRA recipe is compiled and trained for 4 steps once (module fixture); each test copies
that run dir, so every case is a few steps of the built-in model.
"""

from __future__ import annotations

import ast
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import read_metrics, tunegen
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tunegen.compiler.schema import field_at

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
name: life
method: lora
model: tiny
data: {path: data/small.jsonl, max_seq_len: 64}
lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}
training: {max_steps: 4, batch_size: 4, lr: 3.0e-3, warmup_steps: 1, seed: 1}
checkpoint: {output_dir: runs/life, save_every_n_steps: 2}
logging: {every_n_steps: 1}
"""
RECIPE = "generated/life.py"
_MISSING = object()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled `life` recipe (40 samples: 10 steps per epoch) and a finished 4-step run."""
    root = tmp_path_factory.mktemp("life")
    (root / "data").mkdir()
    lines = (REPO / "specs/data/demo_train.jsonl").read_text().splitlines()[:40]
    (root / "data/small.jsonl").write_text("\n".join(lines) + "\n")
    (root / "spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml", cwd=root).returncode == 0
    result = tunegen("run", RECIPE, cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def run_copy(project: Path, monkeypatch: pytest.MonkeyPatch, request) -> str:
    """A copy of the finished run, named after the test; the cwd is the project."""
    monkeypatch.chdir(project)
    name = f"runs/{request.node.name.replace('[', '_').rstrip(']')}"
    shutil.copytree("runs/life", name)
    return name


def named_keys(message: str) -> list[str]:
    """The dotted config keys a message names (`training.resume=auto` -> training.resume)."""
    return re.findall(r"(?<![\w./])([a-z_]+\.[a-z_]+(?:\.[a-z_]+)*)(?=[=\s,;:)]|$)", message)


def assert_keys_exist(message: str, config: str = "generated/life.yaml") -> None:
    cfg = OmegaConf.load(config)
    keys = named_keys(message)
    assert keys, message
    for key in keys:
        assert OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING, (key, message)


# -- item 1: messages name keys of the config being run ------------------------------------------


def _config_keys() -> set[str]:
    keys: set[str] = set()

    def walk(tree: dict, prefix: str = "") -> None:
        for key, value in tree.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    for config in (REPO / "tests/golden").rglob("*.yaml"):  # shipped specs and combinations
        walk(OmegaConf.to_container(OmegaConf.load(config)))
    return keys


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """String literals of a module that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]


_FILE_SUFFIXES = ("json", "jsonl", "safetensors", "model", "yaml", "pt", "txt", "jinja", "py")


def test_every_runtime_and_recipe_message_names_keys_of_the_generated_configs() -> None:
    keys = _config_keys()
    sections = {key for key in keys if "." not in key} | {"checkpoint", "data", "scheduler"}
    files = [
        *sorted((REPO / "runtime").rglob("*.py")),
        *sorted((REPO / "tests/golden").glob("*.py")),
    ]
    wrong, seen = [], set()
    for file in files:
        for line, text in _message_strings(file):
            for key in named_keys(text):
                if key.split(".")[0] in sections and key.split(".")[-1] not in _FILE_SUFFIXES:
                    seen.add(key)
                    # "set training.x: v in the spec and regenerate" names a spec key instead
                    spec_key = "in the spec" in text[text.index(key) :]
                    known = field_at(key.split("."))[1] is not None if spec_key else key in keys
                    if not known:
                        wrong.append(f"{file.relative_to(REPO)}:{line}: {key}")
    assert not wrong
    assert {"training.resume", "checkpointer.output_dir", "training.batch_size"} <= seen


# -- items 1 and 2: a rerun is refused before the model is built ---------------------------------


@pytest.mark.slow
def test_a_rerun_is_refused_before_the_model_is_built_naming_keys_that_exist(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    result = tunegen("run", RECIPE)
    assert result.returncode == 2
    assert result.stderr == (
        "error: runs/life already holds checkpoints (latest step_000004); set"
        " training.resume=auto to continue that run, or choose another checkpointer.output_dir\n"
    )
    assert "model:" not in result.stdout and "training " not in result.stdout  # nothing built
    assert_keys_exist(result.stderr)


# -- items 3, 4 and 6: extending a finished run with a changed config ----------------------------


@pytest.mark.slow
def test_extending_a_finished_run_reports_changes_and_replaces_its_export(run_copy: str) -> None:
    run = Path(run_copy)
    old_adapter = load_file(run / "peft_adapter/adapter_model.safetensors")
    result = tunegen(
        "run",
        RECIPE,
        f"checkpointer.output_dir={run}",
        "training.resume=auto",
        "training.max_steps=6",
        "training.lr=1e-3",
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"resuming {run}/step_000004 with a changed config:\n"
        "  checkpointer.output_dir: runs/life -> " + str(run) + "\n"
        "  training.lr: 0.003 -> 0.001 (the new peak lr, on the same schedule)\n"
        "  training.max_steps: 4 -> 6 (the lr schedule spans the new length, continuing from"
        " the saved step)\n"
    ) in result.stdout
    # The export is the adapter of the last checkpoint (step 6), not the stale one of step 4.
    adapter = load_file(run / "peft_adapter/adapter_model.safetensors")
    step_6 = load_file(run / "step_000006/adapter.safetensors")
    for key, value in step_6.items():
        peft_key = "base_model.model." + key.replace(".lora_a.", ".lora_A.").replace(
            ".lora_b.", ".lora_B."
        )
        assert torch.equal(adapter[peft_key], value)
    assert any(not torch.equal(adapter[k], old_adapter[k]) for k in adapter)
    # The new lr, on the schedule as if the run had been started with 6 steps: no restart.
    rows = read_metrics(run / "metrics.jsonl")
    lr_5 = next(row["lr"] for row in rows if row.get("step") == 5 and "lr" in row)
    progress = (4 - 1) / (6 - 1)  # warmup 1, total 6, step 4 done
    assert lr_5 == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-12)
    # Each step logged once, the resume marked where it happened.
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {"event": "resume", "step": 4} in rows


@pytest.mark.slow
def test_resuming_with_another_batch_size_is_refused_naming_the_key_to_set(run_copy: str) -> None:
    args = (f"checkpointer.output_dir={run_copy}", "training.resume=auto")
    result = tunegen("run", RECIPE, *args, "training.batch_size=2")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: generated/life.yaml: training.batch_size: 2 differs from 4 in the checkpoint"
        f" {run_copy}/step_000004"
    )
    assert "set training.batch_size=4 to resume it" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "model:" not in result.stdout  # refused before anything was built
    assert_keys_exist(result.stderr)


@pytest.mark.slow
def test_an_unchanged_resume_of_a_finished_run_lists_nothing_and_keeps_the_log(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    before = read_metrics(Path("runs/life/metrics.jsonl"))
    result = tunegen("run", RECIPE, "training.resume=auto")
    assert result.returncode == 0, result.stderr
    assert "changed config" not in result.stdout
    after = read_metrics(Path("runs/life/metrics.jsonl"))
    assert after[: len(before)] == before
    assert [row for row in after if "loss" in row] == [row for row in before if "loss" in row]


# -- items 7 and 14: max_steps decides the length; throughput of real tokens ---------------------


@pytest.mark.slow
def test_max_steps_decides_the_length_past_epochs_and_the_start_line_says_so(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    result = tunegen(
        "run",
        RECIPE,
        "checkpointer.output_dir=runs/long",
        "training.max_steps=12",
        "training.epochs=1",
        "training.save_every_n_steps=null",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "training 12 steps (1.2 epochs of 10 steps, batch 4 x accumulation 1 = 4 samples per"
        " step)\n"
    ) in result.stdout
    rows = [row for row in read_metrics(Path("runs/long/metrics.jsonl")) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, 13))
    # Prompts carry no loss, so fewer tokens carry loss than are read.
    assert all(0 < row["loss_tokens_per_s"] < row["tokens_per_s"] for row in rows)


# -- items 9 and 10: the exported adapter loads with peft from anywhere, with normal modes -------


@pytest.mark.slow
def test_peft_loads_the_exported_adapter_from_another_dir(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peft = pytest.importorskip("peft")
    from tunegen.runtime.hf_checkpoint import load_model
    from tunegen.runtime.peft_export import load_peft_adapter

    adapter = project / "runs/life/peft_adapter"
    monkeypatch.chdir(tmp_path)  # nothing of the run is reachable by a relative path
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()
    ours = load_model(adapter / "base_model")
    assert load_peft_adapter(ours, adapter)
    tokens = torch.tensor([[1, 17, 42, 99, 5, 7]])
    with torch.no_grad():
        theirs = model(tokens).logits
        mine = ours.eval()(tokens)
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_exported_and_checkpoint_files_get_the_users_file_mode(project: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in (project / "runs/life").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {str(p.relative_to(project)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes
