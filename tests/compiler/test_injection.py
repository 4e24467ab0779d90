"""Spec strings never become code: arbitrary text in free-form fields stays data.

Free-form spec strings reach only the generated YAML config (through a YAML emitter) and, for the
spec's own path, a comment line. Whatever the text (quotes, newlines, `\"\"\"`, `__import__('os')`),
the recipe must be byte-identical to the one compiled from a plain value, and the config must load
back to exactly the value given.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tunegen.compiler.parse import parse_spec_text
from tunegen.compiler.pipeline import Compiled, compile_spec
from tunegen.runtime.config import expand_home

BASE = {
    "name": "fuzzed",
    "method": "full",
    "model": "tiny",
    "data": {"path": "train.jsonl", "format": "text", "column": "text"},
    "checkpoint": {"output_dir": "runs/x"},
}

nasty = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
) | st.sampled_from(
    [
        '"""',
        "'''",
        "\n__import__('os').system('x')\n",
        "a: b",
        "#",
        "${oc.env:HOME}",
        "\\${x}",
        "a\\",
        "${",
        "\\",
    ]
)


def _without_hash(text: str) -> str:
    return re.sub(r"spec sha256 [0-9a-f]{12}", "", text)


def compile_with(tmp_path, column: str, output_dir: str) -> Compiled:
    spec = json.loads(json.dumps(BASE))
    spec["data"]["column"] = column
    spec["checkpoint"]["output_dir"] = output_dir
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, default_style='"'), encoding="utf-8")
    parse_spec_text(path.read_text(), path)  # the written spec itself parses
    return compile_spec(path, tmp_path / "generated")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(column=nasty, output_dir=nasty)
def test_free_text_fields_stay_data(tmp_path, column, output_dir):
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n')
    plain = compile_with(tmp_path, "text", "runs/x")
    fuzzed = compile_with(tmp_path, column, output_dir)
    # Only the header's spec hash may differ.
    assert _without_hash(fuzzed.rendered.recipe) == _without_hash(plain.rendered.recipe)
    # What the recipe reads: the YAML as OmegaConf resolves it (no text turns into interpolation).
    config = OmegaConf.to_container(OmegaConf.create(fuzzed.rendered.config), resolve=True)
    assert config["dataset"]["column"] == column
    # output_dir is a path relative to the spec; outside the working directory it is written
    # absolute (tmp_path is not the working directory here).
    output_dir = Path(os.path.normpath(tmp_path / expand_home(output_dir))).as_posix()
    assert config["checkpointer"]["output_dir"] == output_dir
    assert config["logging"]["metric_logger"]["log_dir"] == output_dir
    assert config["export"]["output_dir"] == f"{output_dir}/hf_model"


def test_a_hostile_spec_file_name_stays_inside_the_header_comment(tmp_path):
    folder = tmp_path / 'x\n__import__("os").system("echo hi")\n"""'
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "hi"}\n')
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    recipe = compile_spec(spec, tmp_path / "generated").rendered.recipe
    lines = recipe.splitlines()
    assert all(line.startswith("#") for line in lines[:4])
    assert "__import__" in lines[0]
    module = ast.parse(recipe)
    assert ast.get_docstring(module) == "Full fine-tuning: every weight of the model is trained."
    assert not any("system" in ast.dump(node) for node in module.body)


file_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
    min_size=1,
    max_size=30,
).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(data_name=file_names | st.sampled_from(['"""', "${oc.env:HOME}", "a'b\nc"]))
def test_hostile_data_file_names_stay_data_and_importing_the_recipe_runs_nothing(
    tmp_path, data_name
):
    import importlib.util
    import sys

    data_file = tmp_path / f"{data_name}.jsonl"
    data_file.write_text('{"text": "hi"}\n')
    spec = json.loads(json.dumps(BASE))
    spec["data"]["path"] = data_file.name
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, default_style='"'), encoding="utf-8")
    compiled = compile_spec(path, tmp_path / "generated")
    config = OmegaConf.to_container(OmegaConf.create(compiled.rendered.config), resolve=True)
    assert config["dataset"]["source"].endswith(data_file.name)
    recipe_file = tmp_path / "recipe_under_test.py"
    recipe_file.write_text(compiled.rendered.recipe, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location("recipe_under_test", recipe_file)
    module = importlib.util.module_from_spec(module_spec)
    before = set(tmp_path.iterdir())
    saved_argv = sys.argv
    sys.argv = ["never-read"]  # importing must not run main(), so argv is never parsed
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.argv = saved_argv
    assert set(tmp_path.iterdir()) == before  # importing wrote nothing
    assert callable(module.main) and hasattr(module, "FullFinetuneRecipe")
    # The data path reaches only the config: the recipe is the one a plain name gives.
    spec["data"]["path"] = "train.jsonl"
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n')
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    plain = compile_spec(path, tmp_path / "generated").rendered.recipe
    assert _without_hash(compiled.rendered.recipe) == _without_hash(plain)


VALIDATED_FIELDS = {
    "name": ("name",),
    "model": ("model",),
    "device": ("training", "device"),
    "resume": ("checkpoint", "resume"),
    "template": ("data", "template"),
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(sorted(VALIDATED_FIELDS)), text=nasty)
def test_validated_string_fields_refuse_or_stay_data(tmp_path, field, text):
    """Fields that must be identifiers, names or paths: arbitrary text is a clean SpecError, or
    (when it happens to be valid) it changes nothing in the recipe but the names it should."""
    from tunegen.runtime.errors import SpecError

    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n')
    spec = json.loads(json.dumps(BASE))
    *parents, leaf = VALIDATED_FIELDS[field]
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = text
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, default_style='"'), encoding="utf-8")
    try:
        compiled = compile_spec(path, tmp_path / "generated")
    except SpecError as error:
        # Every problem is one line located in the spec file.
        assert all(line.startswith(f"{path}:") for line in str(error).splitlines()), error
        return
    module = ast.parse(compiled.rendered.recipe)
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
    }
    assert not calls & {"system", "eval", "exec", "__import__", "popen"}
