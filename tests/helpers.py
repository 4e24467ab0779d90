"""Helpers for tests that run the `tunegen` command and generated recipes, in this process or
as subprocesses."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

TUNEGEN = [sys.executable, "-m", "tunegen.compiler"]
SPECS = Path(__file__).resolve().parents[1] / "specs"  # the built-in specs and demo data


# The size of the random Hugging Face models the interop tests write (small, but every shape
# differs: heads, KV heads, hidden and intermediate sizes).
HF_TEST_SIZES = {
    "vocab_size": 128,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
}


def save_random_hf_model(folder: Path, architecture: str) -> Path:
    """A random-init `llama` or `phi3` (fused qkv / gate_up) checkpoint of HF_TEST_SIZES, seed 0,
    written by transformers into `folder`."""
    import torch
    import transformers

    configs = {
        "llama": lambda: transformers.LlamaConfig(**HF_TEST_SIZES),
        "phi3": lambda: transformers.Phi3Config(
            **HF_TEST_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),
    }
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(configs[architecture]()).save_pretrained(folder)
    return folder


def load_script(name: str) -> ModuleType:
    """The module `scripts/<name>.py` (scripts are not part of the installed package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tunegen(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `tunegen ARGS` and capture its output."""
    return subprocess.run(
        [*TUNEGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_in_process(*argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """`tunegen ARGV` run in this process as the console script runs it (`main()` with
    `sys.argv`), from `cwd`: (exit status, stdout, stderr). Cheaper than a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, Path.cwd()
    sys.argv = ["tunegen", *argv]
    status = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            from tunegen.compiler.cli import main

            main()
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
    return status, out.getvalue(), err.getvalue()


def tunegen_status(argv: list[str]) -> int:
    """Run `tunegen ARGV` in this process as the console script would (output to the real
    stdout/stderr, for capsys); return the exit status."""
    from tunegen.compiler.cli import main

    saved = sys.argv
    sys.argv = ["tunegen", *argv]
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def tunegen_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`tunegen ARGS` in this process (see `cli_in_process`), shaped like a finished subprocess."""
    status, out, err = cli_in_process(*args, cwd=cwd)
    return subprocess.CompletedProcess(["tunegen", *args], status, out, err)


def run_recipe(recipe: str | Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run a generated recipe with its config (the `.yaml` beside it) and `overrides` in this
    process, as `tunegen run` does (torch is imported once for the whole suite); the exit status
    must be `expect`. Tests that signal the run or need a fresh interpreter use
    `run_recipe_subprocess`."""
    recipe = Path(recipe)
    result = tunegen_in_process(
        "run", str(recipe), "--config", str(recipe.with_suffix(".yaml")), *overrides
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def run_recipe_subprocess(
    recipe: str | Path, *overrides: str, expect: int = 0
) -> subprocess.CompletedProcess:
    """`run_recipe` in a fresh interpreter (`python recipe.py --config ...`)."""
    recipe = Path(recipe)
    result = subprocess.run(
        [sys.executable, str(recipe), "--config", str(recipe.with_suffix(".yaml")), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines of a metrics file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(path: Path) -> dict[int, float]:
    """step -> loss from a metrics file (training steps only)."""
    return {row["step"]: row["loss"] for row in read_metrics(path) if "loss" in row}


ABSURD_OPTIMIZER = '''\
import torch


class AbsurdAdamW(torch.optim.AdamW):
    """AdamW at lr=1e30 whatever the config says: it wrecks the weights at the first step."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, fused: bool = False) -> None:
        super().__init__(params, lr=1e30, weight_decay=weight_decay, fused=fused)
'''


def absurd_optimizer() -> str:
    """Write a user optimizer into the working directory and return the override that uses it.

    Tests of non-finite losses need weights blown up at once; `training.lr=1e30` no longer does
    that, since the pre-flight holds training.lr to the spec's range (at most 10).
    """
    Path("absurd_optimizer.py").write_text(ABSURD_OPTIMIZER, encoding="utf-8")
    return "optimizer._component_=absurd_optimizer.AbsurdAdamW"
