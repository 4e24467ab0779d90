"""Validation code is compiled in only where the spec asks for it, in the form it asked for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from combinations import COMBINATIONS, GOLDEN_ONLY, combination_spec

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


def _golden_specs() -> list[tuple[Path, dict]]:
    specs = [
        (GOLDEN / f"{p.stem}.py", yaml.safe_load(p.read_text()))
        for p in sorted((REPO / "specs").glob("*.yaml"))
    ]
    for name, settings in {**COMBINATIONS, **GOLDEN_ONLY}.items():
        specs.append(
            (GOLDEN / "combinations" / f"{name}.py", combination_spec(name, settings, steps=3))
        )
    return specs


def _names(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    return names


@pytest.mark.parametrize("golden, spec", _golden_specs(), ids=lambda v: getattr(v, "stem", ""))
def test_validation_code_only_where_the_spec_asks(golden: Path, spec: dict) -> None:
    names = _names(golden.read_text())
    data = spec["data"]
    validates = "val_path" in data or "val_split" in data
    validation = {"validate", "_setup_val_data", "validation_due", "islice", "val_dataset"}
    assert (validation <= names) == validates
    assert bool(validation & names) == validates
    assert ("split_off" in names) == ("val_split" in data)
    keep_best = (spec.get("checkpoint") or {}).get("keep_best") is not None
    assert ("save_best" in names) == keep_best


def test_shipped_examples_validate() -> None:
    """The demo validates on its held-out file; a combination of each objective validates."""
    demo = yaml.safe_load((REPO / "specs" / "demo.yaml").read_text())
    assert demo["data"]["val_path"] == "data/demo_heldout.jsonl"
    methods = {
        settings["method"]
        for settings in COMBINATIONS.values()
        if "val_split" in settings.get("data", {}) or "val_path" in settings.get("data", {})
    }
    assert {"lora", "dpo", "kd"} <= methods
