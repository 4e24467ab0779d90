"""The template mechanism (docs/architecture.md): hooks, slots, parts, and the post-render pass."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import textwrap
from pathlib import Path

import jinja2
import libcst
import pytest
from helpers import load_script

from tunegen.compiler.formatting import format_python
from tunegen.compiler.imports import FROM_IMPORTS, MODULE_IMPORTS, add_imports
from tunegen.compiler.output_check import GeneratedCodeError
from tunegen.compiler.pipeline import Compiled
from tunegen.compiler.render import environment, render

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
GOLDEN = REPO / "tests" / "golden"


def _documented_example() -> str:
    """The feature part of docs/architecture.md's "How to add a feature", as written there."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc[doc.index("## How to add a feature") :]
    block = re.search(r"```jinja\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return textwrap.dedent(block[1])


@pytest.fixture(scope="module")
def compiles() -> dict[str, Compiled]:
    """The golden specs' compiles by name (one per objective among them)."""
    cwd = Path.cwd()
    try:
        compiled = load_script("refresh_golden").golden_compiles()
    finally:
        os.chdir(cwd)
    return {path.stem: c for path, c in compiled.items()}


def _function(source: str, name: str) -> str:
    """The source of the function or method `name` in `source`."""
    module = libcst.parse_module(source)
    found = []

    class Find(libcst.CSTVisitor):
        def visit_FunctionDef(self, node: libcst.FunctionDef) -> None:
            if node.name.value == name:
                found.append(module.code_for_node(node))

    module.visit(Find())
    assert len(found) == 1, name
    return found[0]


def _with_feature(compiled: Compiled, feature: str, text: str) -> str:
    plan = dataclasses.replace(compiled.plan, features=(*compiled.plan.features, feature))
    return render(plan, overlay={f"features/{feature}.py.j2": text}).recipe


@pytest.mark.parametrize(
    "name", ["lora", "full", "dpo", "kd", "dpo_full_skip_nonfinite", "kd_lora_dora_eval_profiler"]
)
def test_a_feature_added_in_one_part_reaches_its_hooks_in_every_objective(compiles, name):
    recipe = _with_feature(compiles[name], "tokens_seen", _documented_example())
    setup = _function(recipe, "setup")
    assert setup.index("self.tokens_seen = 0") < setup.index("self.load_checkpoint()")
    train = _function(recipe, "train")
    counted = train.index("self.tokens_seen += num_inputs")
    assert train.index("metrics = {") < counted < train.index("self.optimizer.step()")
    logged = train.index("tokens_seen=self.tokens_seen,")
    assert train.index("self._log_step(") < logged < train.index("**throughput(")
    save = _function(recipe, "save_checkpoint")
    assert save.index('"rng": rng_state(),') < save.index('"tokens_seen": self.tokens_seen,')
    load = _function(recipe, "load_checkpoint")
    assert 'self.tokens_seen = state["tokens_seen"]' in load
    # Everything else is the recipe as it was.
    lines = [line.strip() for line in recipe.splitlines() if "tokens_seen" not in line]
    before = compiles[name].rendered.recipe.splitlines()
    assert lines == [line.strip() for line in before]


def test_a_slot_takes_exactly_one_part(compiles):
    second_loss_check = "{% macro loss_check() %}\npass\n{% endmacro %}\n"
    with pytest.raises(jinja2.TemplateRuntimeError, match="slot 'loss_check' needs exactly one"):
        _with_feature(compiles["lora"], "twice", second_loss_check)


def test_a_hook_tag_must_stand_alone_on_its_line():
    bad = {"recipe.py.j2": 'x = 1  {% hook "setup" %}\n'}
    with pytest.raises(jinja2.TemplateSyntaxError, match="must stand alone on its line"):
        environment(bad).get_template("recipe.py.j2")


def _template_files() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.j2"))


def _hook_names() -> set[str]:
    tags = re.compile(r'\{% (?:hook|slot) "([a-z_]+)" %\}')
    return {name for path in _template_files() for name in tags.findall(path.read_text())}


@pytest.mark.parametrize("path", _template_files(), ids=lambda p: p.name)
def test_templates_stay_readable(path):
    """At most 12 `{% if %}` per template, nested at most 2 deep (issue 15's bar)."""
    depth = deepest = ifs = 0
    for tag in re.findall(r"\{%-?\s*(if|endif|for|endfor|macro|endmacro)\b", path.read_text()):
        if tag == "if":
            ifs += 1
            depth += 1
            deepest = max(deepest, depth)
        elif tag == "endif":
            depth -= 1
    assert ifs <= 12 and deepest <= 2, (ifs, deepest)


@pytest.mark.parametrize(
    "path",
    sorted((TEMPLATES / "features").glob("*.j2")) + sorted((TEMPLATES / "objectives").glob("*.j2")),
    ids=lambda p: p.name,
)
def test_every_macro_of_a_part_is_a_hook_or_slot(path):
    """A misspelt macro name would silently contribute nothing."""
    macros = set(re.findall(r"\{% macro ([a-z_]+)\(\) %\}", path.read_text()))
    assert macros, path
    assert macros <= _hook_names(), macros - _hook_names()


def test_imports_come_from_the_names_the_code_uses():
    source = (
        '"""Doc."""\n'
        "import torch\nimport torch\nfrom tunegen.runtime.lora import apply_lora\n"
        "X = time.perf_counter()\n"
        "def f(copy: DataLoader) -> None:\n    copy.x = partial(torch.ones, ResumableSampler)\n"
    )
    assert add_imports(source) == (
        '"""Doc."""\n\n'
        "from __future__ import annotations\n\n"
        "import time\nfrom functools import partial\n\n"
        "import torch\nfrom torch.utils.data import DataLoader\n"
        "from tunegen.runtime.data import ResumableSampler\n\n"
        "X = time.perf_counter()\n"
        "def f(copy: DataLoader) -> None:\n    copy.x = partial(torch.ones, ResumableSampler)\n"
    )


def test_a_name_nobody_imports_fails_the_compile():
    with pytest.raises(GeneratedCodeError, match="uses frobnicate, which it neither defines"):
        add_imports("x = frobnicate(1)\n")


@pytest.mark.parametrize("name", sorted(FROM_IMPORTS))
def test_every_known_import_exists(name):
    assert hasattr(importlib.import_module(FROM_IMPORTS[name]), name)


def test_module_imports_are_modules():
    for name in MODULE_IMPORTS:
        importlib.import_module(name)


def test_formatting_ignores_the_working_directorys_ruff_settings(tmp_path, monkeypatch):
    source = "x = [1,2,3]\ndef f(a, b): return some_function_name(a, b, c=[1, 2, 3], d='text')\n"
    expected = format_python(source)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ruff]\nline-length = 40\n[tool.ruff.format]\nquote-style = "single"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert format_python(source) == expected
    assert 'd="text"' in expected
