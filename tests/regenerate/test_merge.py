"""The merge machinery on its own: diff3 of lines, the recipe's structure, imports, config entries.
Fast (no torch, no CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegen.compiler.config_merge import merge_config, split_config
from tunegen.compiler.merge import (
    Labels,
    has_conflict_markers,
    import_block,
    merge_lines,
    merge_recipe,
    split_recipe,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
LABELS = Labels("generated 0.1.0", "generated 0.2.0")


def test_changes_on_different_lines_both_arrive():
    merged = merge_lines("a\nb\nc\nd\ne\n", "a\nB\nc\nd\ne\n", "a\nb\nc\nD\ne\n")
    assert merged.text == "a\nB\nc\nD\ne\n" and not merged.conflicts


def test_the_same_change_on_both_sides_is_no_conflict():
    merged = merge_lines("a\nb\nc\n", "a\nX\nc\n", "a\nX\nc\n")
    assert merged.text == "a\nX\nc\n" and not merged.conflicts


def test_overlapping_changes_are_marked_as_git_marks_them():
    merged = merge_lines("a\nb\nc\n", "a\nmine\nc\n", "a\ntheirs\nc\n", labels=LABELS, where="f")
    assert merged.text == (
        "a\n<<<<<<< yours\nmine\n||||||| generated 0.1.0\nb\n=======\ntheirs\n"
        ">>>>>>> generated 0.2.0\nc\n"
    )
    assert [(c.line, c.where, c.what) for c in merged.conflicts] == [
        (2, "f", "both changed these lines")
    ]
    assert has_conflict_markers(merged.text)


def test_a_deletion_and_an_unrelated_insertion_merge():
    merged = merge_lines("1\n2\n3\n4\n5\n6\n", "1\n4\n5\n6\n", "1\n2\n3\n4\n5\n5b\n6\n")
    assert merged.text == "1\n4\n5\n5b\n6\n" and not merged.conflicts


def test_a_last_line_without_newline_does_not_swallow_a_marker():
    merged = merge_lines("x", "y", "z")
    assert merged.text.splitlines()[1:3] == ["y", "||||||| generated"]


@pytest.mark.parametrize("path", sorted(GOLDEN.rglob("*.py")), ids=lambda p: p.stem)
def test_every_golden_recipe_splits_into_pieces_that_join_to_it(path: Path):
    source = path.read_text()
    structure = split_recipe(source)
    assert "".join(structure.pieces.values()) == source
    assert "\n" + import_block(structure.imports) == structure.pieces["<imports>"]
    assert any(key.endswith(".train") for key in structure.pieces)


@pytest.mark.parametrize("path", sorted(GOLDEN.rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_golden_config_splits_into_entries_that_join_to_it(path: Path):
    text = path.read_text()
    entries = split_config(text)
    assert "".join(entries.values()) == text
    assert "training.lr" in entries or "training" in entries


def test_pieces_are_keyed_by_qualified_name():
    source = (GOLDEN / "demo.py").read_text()
    keys = list(split_recipe(source).pieces)
    assert keys[:3] == ["<header>", "<imports>", "<module>"]
    assert "FullFinetuneRecipe" in keys and "FullFinetuneRecipe.train" in keys
    assert keys[-2:] == ["main", "after main"]


def test_imports_are_the_union_minus_what_either_side_removed():
    base = '"""Doc."""\n\nimport sys\nimport time\n\nX = sys.argv, time.time\n'
    ours = '"""Doc."""\n\nimport math\nimport sys\n\nX = sys.argv, math.pi\n'
    theirs = '"""Doc."""\n\nimport sys\nimport time\nfrom functools import partial\n\nX = sys.argv, time.time, partial\n'
    merged = merge_recipe(base, ours, theirs)
    assert merged.text == (
        '"""Doc."""\n\nimport math\nimport sys\nfrom functools import partial\n\n'
        "<<<<<<< yours\nX = sys.argv, math.pi\n||||||| generated\nX = sys.argv, time.time\n"
        "=======\nX = sys.argv, time.time, partial\n>>>>>>> generated\n"
    )


def test_a_method_added_by_the_user_stays_after_its_neighbour():
    base = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 2\n"
    ours = base.replace("    def g", "    def mine(self):\n        return 0\n\n    def g")
    theirs = base.replace("return 2", "return 3")
    merged = merge_recipe(base, ours, theirs)
    assert merged.text == ours.replace("return 2", "return 3") and not merged.conflicts


def test_a_deleted_method_the_generation_changes_is_a_conflict():
    base = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 2\n"
    ours = "class A:\n    def f(self):\n        return 1\n"
    theirs = base.replace("return 2", "return 3")
    merged = merge_recipe(base, ours, theirs, labels=LABELS)
    assert [(c.where, c.what) for c in merged.conflicts] == [
        ("A.g", "you deleted this method; the new generation changes it")
    ]
    assert (
        "<<<<<<< yours\n||||||| generated 0.1.0\n\n    def g(self):\n        return 2\n"
        in merged.text
    )


def test_a_renamed_recipe_class_keeps_the_users_method():
    base = "class LoRARecipe:\n    def f(self):\n        return 1\n"
    ours = base + "\n    def mine(self):\n        return 0\n"
    theirs = "class DoRARecipe:\n    def f(self):\n        return 1\n"
    merged = merge_recipe(base, ours, theirs)
    assert merged.text == theirs + "\n    def mine(self):\n        return 0\n"


def test_a_user_line_using_an_import_the_generation_drops_keeps_its_import():
    base = "import time\n\n\ndef f():\n    return time.time()\n"
    ours = base.replace("return time.time()", "print(time.time())\n    return time.time()")
    theirs = "import sys\n\n\ndef f():\n    return sys.argv\n"
    merged = merge_recipe(base, ours, theirs)
    assert merged.conflicts  # both changed f
    theirs_g = "import sys\nimport time\n\n\ndef f():\n    return time.time()\n\n\ndef g():\n    return sys.argv\n"
    mine = base + "\n\ndef h():\n    return time.monotonic()\n"
    merged = merge_recipe(
        base, mine, theirs_g.replace("import time\n", "").replace("time.time()", "0")
    )
    assert merged.text.startswith("import sys\nimport time\n") and not merged.conflicts


def test_config_value_and_comment_merge_separately():
    base = "training:\n  lr: 0.1  # the rate\n  epochs: 1  # passes\n"
    ours = "training:\n  # tuned by hand\n  lr: 0.5  # the rate\n  epochs: 1  # passes\n"
    theirs = "training:\n  lr: 0.1  # peak learning rate\n  epochs: 2  # passes\n"
    merged = merge_config(base, ours, theirs)
    assert merged.text == (
        "training:\n  # tuned by hand\n  lr: 0.5  # peak learning rate\n  epochs: 2  # passes\n"
    )


def test_config_keys_follow_the_spec_and_user_keys_stay():
    base = "lora:\n  rank: 8  # r\ntraining:\n  lr: 0.1\n"
    ours = "lora:\n  rank: 16  # r\ntraining:\n  lr: 0.1\n  mine: 3  # my key\n# end notes\n"
    theirs = "training:\n  lr: 0.1\n  clip: 1.0  # new\n"
    merged = merge_config(base, ours, theirs)
    assert (
        merged.text
        == "training:\n  lr: 0.1\n  mine: 3  # my key\n  clip: 1.0  # new\n# end notes\n"
    )
    assert merged.notes == ("lora.rank: the new spec removes this key (you had changed it)",)
    assert not merged.conflicts


def test_config_value_both_changed_is_a_conflict_naming_both_values():
    base = "training:\n  lr: 0.1  # rate\n"
    merged = merge_config(base, base.replace("0.1", "0.5"), base.replace("0.1", "0.2"))
    assert [(c.line, c.where, c.what) for c in merged.conflicts] == [
        (2, "training.lr", "you set 0.5, the new spec sets 0.2")
    ]


def test_a_key_the_user_added_under_a_removed_section_is_a_conflict():
    base = "lora:\n  rank: 8\ntraining:\n  lr: 0.1\n"
    ours = "lora:\n  rank: 8\n  mine: 1\ntraining:\n  lr: 0.1\n"
    theirs = "training:\n  lr: 0.1\n"
    merged = merge_config(base, ours, theirs)
    assert [c.where for c in merged.conflicts] == ["lora.mine"]
    assert "  mine: 1\n" in merged.text


def test_a_function_the_user_added_after_a_class_stays_outside_it():
    base = "class A:\n    def f(self):\n        return 1\n\n\ndef main():\n    pass\n"
    ours = base.replace("\n\ndef main", "\n\ndef mine():\n    return 0\n\n\ndef main")
    theirs = base.replace(
        "        return 1\n", "        return 1\n\n    def g(self):\n        return 2\n"
    )
    merged = merge_recipe(base, ours, theirs)
    assert merged.text == theirs.replace(
        "\n\ndef main", "\n\ndef mine():\n    return 0\n\n\ndef main"
    )


def test_a_section_the_user_added_stays_outside_the_section_before_it():
    base = "training:\n  lr: 0.1\nlogging:\n  every: 1\n"
    ours = base.replace("logging:", "mine:\n  x: 1\nlogging:")
    theirs = base.replace("  lr: 0.1\n", "  lr: 0.1\n  clip: 1.0\n")
    merged = merge_config(base, ours, theirs)
    assert merged.text == "training:\n  lr: 0.1\n  clip: 1.0\nmine:\n  x: 1\nlogging:\n  every: 1\n"
