"""Rewrite tests/golden/ from the built-in specs: run after an intended change to generated code.

    .venv/bin/python scripts/refresh_golden.py

Then review `git diff tests/golden` as you would review code: it is what users will get.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunegen.compiler.pipeline import compile_spec

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def golden_outputs() -> dict[Path, str]:
    """Golden file -> text, compiled from the repo root so that paths in them are repo-relative."""
    os.chdir(REPO)
    outputs = {}
    for spec in sorted(Path("specs").glob("*.yaml")):
        compiled = compile_spec(spec, "generated")
        outputs[GOLDEN / f"{compiled.spec.name}.py"] = compiled.rendered.recipe
        outputs[GOLDEN / f"{compiled.spec.name}.yaml"] = compiled.rendered.config
    return outputs


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for path, text in golden_outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
