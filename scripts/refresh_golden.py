"""Rewrite tests/golden/ from the built-in specs and the feature combinations: run after an
intended change to generated code.

    .venv/bin/python scripts/refresh_golden.py

Then review `git diff tests/golden` as you would review code: it is what users will get.
tests/golden/<spec>.py|yaml come from specs/; tests/golden/combinations/ from the settings in
tests/combinations.py (COMBINATIONS, trained by tests/test_method_combinations.py, and GOLDEN_ONLY),
so every feature part of the templates is in some golden recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from tunegen.compiler.pipeline import Compiled, compile_spec
from tunegen.runtime.hf_checkpoint import hf_config_for
from tunegen.runtime.models import tiny
from tunegen.runtime.tokenizers.sentencepiece import builtin_tokenizer_path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
COMBINED = GOLDEN / "combinations"
sys.path.insert(0, str(REPO / "tests"))
from combinations import COMBINATIONS, GOLDEN_ONLY, combination_spec  # noqa: E402


def golden_outputs() -> dict[Path, str]:
    """Golden file -> text: each compiled recipe and config."""
    outputs = {}
    for recipe, compiled in golden_compiles().items():
        outputs[recipe] = compiled.rendered.recipe
        outputs[recipe.with_suffix(".yaml")] = compiled.rendered.config
    return outputs


def golden_compiles() -> dict[Path, Compiled]:
    """Golden recipe path -> its compiled spec, compiled in a scratch copy of the repo's specs
    (and the combinations' specs next to them) so that paths are repo-relative."""
    compiled = {}
    with _scratch_dir():
        for spec in sorted(Path("specs").glob("*.yaml")):
            result = compile_spec(spec, "generated")
            compiled[GOLDEN / f"{result.spec.name}.py"] = result
        for name, settings in sorted({**COMBINATIONS, **GOLDEN_ONLY}.items()):
            spec = Path(f"{name}.yaml")
            text = yaml.safe_dump(combination_spec(name, settings, steps=3), sort_keys=False)
            spec.write_text(text, encoding="utf-8")
            compiled[COMBINED / f"{name}.py"] = compile_spec(spec, "generated")
    return compiled


@contextmanager
def _scratch_dir() -> Iterator[None]:
    """A temporary working dir holding specs/, data/ and stand-in teacher checkpoints.

    The dpo and kd specs start from the demo's trained model (`runs/demo/hf_model`), the kd
    combination from `teacher/`; each gets a stand-in config.json and tokenizer, which is all
    that compiling reads.
    """
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "specs", root / "specs")
        shutil.copytree(REPO / "specs" / "data", root / "data")
        with torch.device("meta"):
            config = hf_config_for(tiny())
        for teacher in (root / "runs" / "demo" / "hf_model", root / "teacher"):
            teacher.mkdir(parents=True)
            (teacher / "config.json").write_text(json.dumps(config), encoding="utf-8")
            shutil.copyfile(builtin_tokenizer_path("tiny"), teacher / "tokenizer.model")
        os.chdir(root)
        try:
            yield
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    COMBINED.mkdir(parents=True, exist_ok=True)
    for path, text in golden_outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
