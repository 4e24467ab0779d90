"""Property: for random statement-level edits of the user that do not touch what the regeneration
changes, and a random spec change, the merge keeps every user edit and every regeneration change
(the result is exactly the user's edits applied to the new generation), and updating again changes
nothing. The same for random value and comment edits of the config."""

from __future__ import annotations

import ast
import os
import shutil
from difflib import SequenceMatcher
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from regen_helpers import SPEC_V1

from tunegen.compiler.config_merge import _split_line, merge_config, split_config
from tunegen.compiler.merge import merge_recipe
from tunegen.compiler.pipeline import compile_spec

SPEC_CHANGES = {
    "rank": ("rank: 8", "rank: 16"),
    "lr": ("lr: 3.0e-4", "lr: 1.0e-4"),
    "dora": ("method: lora", "method: dora"),
    "checkpointing": ("  lr: 3.0e-4\n", "  lr: 3.0e-4\n  activation_checkpointing: true\n"),
    "full": ("method: lora\n", "method: full\n"),
    "data_format": ("max_seq_len: 64}", "format: text, column: output, max_seq_len: 64}"),
}


@pytest.fixture(scope="module")
def generations(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (recipe, config) of spec v1 ("v1") and of each spec change."""
    folder = tmp_path_factory.mktemp("generations")
    shutil.copytree(Path(__file__).resolve().parents[2] / "specs" / "data", folder / "data")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        result = {}
        for name, (old, new) in {"v1": ("", ""), **SPEC_CHANGES}.items():
            text = SPEC_V1.replace(old, new) if old else SPEC_V1
            if name == "full":
                text = text.replace("lora: {rank: 8, alpha: 16}\n", "")
            Path("spec.yaml").write_text(text)
            rendered = compile_spec(Path("spec.yaml"), "generated").rendered
            result[name] = rendered.recipe, rendered.config
        return result
    finally:
        os.chdir(previous)


def stable_statement_lines(base: str, theirs: str) -> dict[int, int]:
    """base line index -> theirs line index, for one-line statements inside functions that the
    regeneration leaves alone together with both neighbours, and whose text is unique."""
    b, t = base.splitlines(), theirs.splitlines()
    statements = set()
    for node in ast.walk(ast.parse(base)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.stmt)
                    and not isinstance(inner, (ast.FunctionDef, ast.ClassDef))
                    and not (isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Constant))
                    and inner.lineno == inner.end_lineno
                    and not hasattr(inner, "body")
                ):
                    statements.add(inner.lineno - 1)
    stable = {}
    for block in SequenceMatcher(None, b, t, autojunk=False).get_matching_blocks():
        for i in range(block.a + 1, block.a + block.size - 1):
            if i in statements and b.count(b[i]) == 1 and t.count(b[i]) == 1:
                stable[i] = block.b + i - block.a
    return stable


def apply_edits(lines: list[str], edits: dict[int, tuple[str, int]]) -> str:
    out = []
    for i, line in enumerate(lines):
        kind, k = edits.get(i, ("", 0))
        indent = line[: len(line) - len(line.lstrip())]
        if kind == "comment":
            out.append(f"{line}  # my note {k}")
        elif kind == "replace":
            out.append(f"{indent}note_{k} = {k}  # replaced by me")
        else:
            out.append(line)
        if kind == "insert":
            out.append(f"{indent}note_{k} = {k}  # added by me")
    return "\n".join(out) + "\n"


edit_kinds = st.sampled_from(["insert", "comment", "replace"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(data=st.data(), change=st.sampled_from(sorted(SPEC_CHANGES)))
def test_non_overlapping_recipe_edits_and_any_spec_change_both_survive(generations, data, change):
    base, theirs = generations["v1"][0], generations[change][0]
    stable = stable_statement_lines(base, theirs)
    chosen = data.draw(
        st.lists(st.sampled_from(sorted(stable)), min_size=1, max_size=6, unique=True)
    )
    kinds = data.draw(st.lists(edit_kinds, min_size=len(chosen), max_size=len(chosen)))
    edits = {i: (kind, k) for k, (i, kind) in enumerate(zip(chosen, kinds, strict=True))}
    ours = apply_edits(base.splitlines(), edits)
    expected = apply_edits(theirs.splitlines(), {stable[i]: e for i, e in edits.items()})

    merged = merge_recipe(base, ours, theirs)

    assert not merged.conflicts
    assert merged.text == expected
    assert merge_recipe(theirs, merged.text, theirs).text == merged.text  # update twice = once
    assert merge_recipe(base, merged.text, theirs).text == merged.text  # re-merging is harmless


def edit_config(entries: dict[str, str], edits: dict[str, tuple[str, int]]) -> str:
    out = []
    for key, text in entries.items():
        kind, k = edits.get(key, ("", 0))
        lines = text.splitlines(keepends=True)
        index = next(
            i for i, line in enumerate(lines) if not line.lstrip().startswith("#") and line.strip()
        )
        line = lines[index]
        indent = line[: len(line) - len(line.lstrip())]
        if kind == "comment":
            lines.insert(index, f"{indent}# my note {k}\n")
        elif kind == "value":
            head, _, comment = _split_line(line)
            lines[index] = f"{head} {1000 + k}{comment}"
        out += lines
    return "".join(out)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(data=st.data(), change=st.sampled_from(sorted(SPEC_CHANGES)))
def test_config_edits_of_keys_the_spec_leaves_alone_survive_any_spec_change(
    generations, data, change
):
    base, theirs = generations["v1"][1], generations[change][1]
    split_b, split_t = split_config(base), split_config(theirs)
    stable = sorted(k for k in split_b if split_t.get(k) == split_b[k] and k != "<end>")
    leaves = [k for k in stable if _split_line(split_b[k].splitlines(True)[-1])[1].strip()]
    keys = data.draw(st.lists(st.sampled_from(stable), min_size=1, max_size=5, unique=True))
    edits = {
        key: ("value" if key in leaves and data.draw(st.booleans()) else "comment", k)
        for k, key in enumerate(keys)
    }
    ours = edit_config(split_b, edits)
    merged = merge_config(base, ours, theirs)
    assert not merged.conflicts
    assert merged.text == edit_config(split_t, edits)
    assert merge_config(theirs, merged.text, theirs).text == merged.text
