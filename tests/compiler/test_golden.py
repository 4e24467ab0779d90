"""The generated code of every built-in spec, compared with the reviewed copy in tests/golden/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import libcst
import pytest
import yaml
from combinations import COMBINATIONS, GOLDEN_ONLY, combination_spec
from helpers import load_script

from tunegen.compiler.pipeline import Compiled
from tunegen.compiler.render import parts_of

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
COMBINED = GOLDEN / "combinations"
SPECS = sorted((REPO / "specs").glob("*.yaml"))
TEMPLATES = REPO / "templates"


def _compile_all() -> dict[Path, Compiled]:
    cwd = Path.cwd()
    try:
        return load_script("refresh_golden").golden_compiles()
    finally:
        os.chdir(cwd)


def _texts(compiles: dict[Path, Compiled]) -> dict[Path, str]:
    texts = {}
    for recipe, compiled in compiles.items():
        texts[recipe] = compiled.rendered.recipe
        texts[recipe.with_suffix(".yaml")] = compiled.rendered.config
    return texts


@pytest.fixture(scope="module")
def compiles() -> dict[Path, Compiled]:
    return _compile_all()


@pytest.fixture(scope="module")
def outputs(compiles) -> dict[Path, str]:
    return _texts(compiles)


def test_every_builtin_spec_and_combination_has_golden_files(outputs):
    combinations = {**COMBINATIONS, **GOLDEN_ONLY}
    assert len(outputs) == 2 * (len(SPECS) + len(combinations))
    for folder in (GOLDEN, COMBINED):
        assert {p for p in outputs if p.parent == folder} == {
            p for p in folder.iterdir() if p.suffix in (".py", ".yaml")
        }


def test_generated_files_equal_golden(outputs):
    stale = [p.name for p, text in outputs.items() if p.read_text(encoding="utf-8") != text]
    assert not stale, (
        f"generated code changed for {stale}: review, then run scripts/refresh_golden.py"
    )


def test_compiling_twice_is_byte_identical(outputs):
    again = _texts(_compile_all())
    assert again == outputs


def test_every_template_part_is_in_some_golden_recipe(compiles):
    """Each objective and feature part's code is reviewed in at least one golden file."""
    used = {part for compiled in compiles.values() for part in parts_of(compiled.plan)}
    shipped = {
        p.relative_to(TEMPLATES).as_posix()
        for folder in ("objectives", "features")
        for p in (TEMPLATES / folder).glob("*.py.j2")
    }
    assert shipped == used


def _names(source: str) -> set[str]:
    """Every identifier used in a module (calls, attributes, imports, definitions)."""
    names: set[str] = set()

    class Collect(libcst.CSTVisitor):
        def visit_Name(self, node: libcst.Name) -> None:
            names.add(node.value)

    libcst.parse_module(source).visit(Collect())
    return names


# The names only each method's recipe may use: a recipe holds no code of another method.
METHOD_NAMES = {
    "lora": {"apply_lora", "lora_state_dict", "mark_only_lora_trainable"},
    "dora": {"use_dora"},
    "qlora": {"quantize_base_weights"},
    "dpo": {"sequence_logps", "preference_metrics", "preference_collate"},
    "dpo_lora": {"disable_adapters"},  # DPO's reference, also GRPO's when grpo.beta > 0
    "dpo_full": {"reference_model", "deepcopy"},
    "kd": {"teacher_model", "kd_loss_fn", "kd_weight"},
    "grpo": {"sample", "repeat_for_groups", "token_logps", "prompt_collate", "make_rollout"},
}


def _features(spec: dict) -> set[str]:
    """Which entries of METHOD_NAMES the spec's recipe needs."""
    method = spec["method"]
    section = spec.get(method) or {}
    # kd and grpo: LoRA when the spec has a lora section
    default_lora = {"dpo": True, "kd": "lora" in spec, "grpo": "lora" in spec}
    adapters = method in ("lora", "dora", "qlora") or section.get(
        "use_lora", default_lora.get(method, False)
    )
    dora = method == "dora" or (adapters and (spec.get("lora") or {}).get("use_dora", False))
    features = {"lora"} if adapters else set()
    features |= {"dora"} if dora else set()
    features |= {method} & {"qlora", "dpo", "kd", "grpo"}
    if method == "dpo" or (method == "grpo" and section.get("beta", 0.0) > 0):
        features.add("dpo_lora" if adapters else "dpo_full")
    return features


def test_every_method_has_a_builtin_spec():
    from tunegen.compiler.schema import METHODS

    methods = {yaml.safe_load(p.read_text())["method"] for p in SPECS}
    assert methods == set(METHODS)


def _golden_specs() -> list[tuple[Path, dict]]:
    """(golden recipe, spec) of every built-in spec and combination."""
    specs = [(GOLDEN / f"{p.stem}.py", yaml.safe_load(p.read_text())) for p in SPECS]
    for name, settings in {**COMBINATIONS, **GOLDEN_ONLY}.items():
        specs.append((COMBINED / f"{name}.py", combination_spec(name, settings, steps=3)))
    return specs


@pytest.mark.parametrize("golden, spec", _golden_specs(), ids=lambda v: getattr(v, "stem", ""))
def test_recipe_holds_only_the_code_its_spec_asks_for(golden, spec, outputs):
    names = _names(outputs[golden])
    features = _features(spec)
    for feature, feature_names in METHOD_NAMES.items():
        assert (feature_names <= names) == (feature in features), feature
        assert bool(feature_names & names) == (feature in features), feature
    assert ("exact_match_accuracy" in names) == ("eval" in spec)
    clip = spec.get("training", {}).get("clip_grad_norm", 1.0) is not None
    assert ("clip_grad_norm_" in names) == clip


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], capture_output=True, text=True, check=False
    )


def test_golden_recipes_pass_ruff_with_default_settings():
    files = [str(p) for p in GOLDEN.glob("*.py")]
    combined = [str(p) for p in COMBINED.glob("*.py")]
    check = _ruff("check", "--isolated", "--select", "E,F,W,I,B,UP", *files)
    assert check.returncode == 0, check.stdout
    # The combinations' long names make header lines no formatter can wrap; only those may be long.
    check = _ruff("check", "--isolated", "--select", "E,F,W,I,B,UP", "--ignore", "E501", *combined)
    assert check.returncode == 0, check.stdout
    for path in combined:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        assert all(len(line) <= 88 for line in lines[4:]), path
    fmt = _ruff("format", "--isolated", "--check", *files, *combined)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_spec_reference_is_up_to_date():
    from tunegen.compiler.docs import spec_reference

    documented = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    assert documented == spec_reference(), "run: python -m tunegen.compiler.docs > docs/spec.md"


def test_every_recipe_summary_fits_a_docstring_line():
    """The summary heads the module and class docstrings of an 88-column file."""
    from tunegen.compiler.plan import recipe_for
    from tunegen.compiler.schema import METHODS

    for method in METHODS:
        objective = method if method in ("dpo", "kd") else "sft"
        for adapters in (False, True):
            for dora in (False, True):
                _, summary = recipe_for(objective, method, adapters=adapters, dora=dora)
                assert len(summary) <= 80, summary
