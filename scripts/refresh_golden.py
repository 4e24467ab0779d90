"""Rewrite tests/golden/ from the built-in specs: run after an intended change to generated code.

    .venv/bin/python scripts/refresh_golden.py

Then review `git diff tests/golden` as you would review code: it is what users will get.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tunegen.compiler.pipeline import compile_spec
from tunegen.runtime.hf_checkpoint import hf_config_for
from tunegen.runtime.models import tiny
from tunegen.runtime.tokenizers.sentencepiece import builtin_tokenizer_path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def golden_outputs() -> dict[Path, str]:
    """Golden file -> text, compiled in a copy of the repo's specs so paths are repo-relative.

    The dpo and kd specs start from the demo's trained model (`runs/demo/hf_model`); the copy gets
    a stand-in config.json and tokenizer there, which is all that compiling reads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "specs", root / "specs")
        teacher = root / "runs" / "demo" / "hf_model"
        teacher.mkdir(parents=True)
        with torch.device("meta"):
            config = hf_config_for(tiny())
        (teacher / "config.json").write_text(json.dumps(config), encoding="utf-8")
        shutil.copyfile(builtin_tokenizer_path("tiny"), teacher / "tokenizer.model")
        os.chdir(root)
        outputs = {}
        for spec in sorted(Path("specs").glob("*.yaml")):
            compiled = compile_spec(spec, "generated")
            outputs[GOLDEN / f"{compiled.spec.name}.py"] = compiled.rendered.recipe
            outputs[GOLDEN / f"{compiled.spec.name}.yaml"] = compiled.rendered.config
        os.chdir(REPO)
    return outputs


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for path, text in golden_outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
