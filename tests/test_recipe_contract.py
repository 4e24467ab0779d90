"""The recipe owns its config contract: hand edits to a generated recipe change what its
pre-flight expects, with no table in the runtime to edit.

Each test compiles the demo spec, edits the recipe (and its config) as a user would, and runs
`tunegen validate` on the config in this process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import tunegen_status as _call
from omegaconf import OmegaConf

RECIPE = Path("generated/demo.py")
CONFIG = Path("generated/demo.yaml")


@pytest.fixture
def demo(workdir: Path, capsys) -> Path:
    assert _call(["new", "--spec", "demo"]) == 0
    capsys.readouterr()
    return workdir


def _validate(capsys, *overrides: str) -> tuple[int, str]:
    status = _call(["validate", str(CONFIG), *overrides])
    return status, capsys.readouterr().err


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_an_argument_the_recipe_adds_is_its_own(demo: Path, capsys) -> None:
    _edit(RECIPE, "params=trainable)", "params=trainable, foreach=False)")
    assert _validate(capsys) == (0, "")
    # ...so the config may no longer set it.
    status, err = _validate(capsys, "+optimizer.foreach=true")
    assert status == 2
    assert err == (
        "error: generated/demo.yaml: optimizer.foreach: the recipe passes this argument of "
        "torch.optim.AdamW; remove it from the config\n"
    )


def test_an_argument_the_recipe_stops_passing_comes_from_the_config(demo: Path, capsys) -> None:
    _edit(
        RECIPE,
        "instantiate(self.cfg.dataset, tokenizer=self.tokenizer)",
        "instantiate(self.cfg.dataset)",
    )
    status, err = _validate(capsys)
    assert status == 2 and err.endswith(
        "dataset: missing required argument 'tokenizer' of tunegen.runtime.data.InstructDataset\n"
    ), err
    cfg = OmegaConf.load(CONFIG)
    cfg.dataset.tokenizer = "${tokenizer}"  # the dataset builds its tokenizer from the config
    CONFIG.write_text(OmegaConf.to_yaml(cfg))
    assert _validate(capsys) == (0, "")


def test_a_feature_removed_with_its_config_section(demo: Path, capsys) -> None:
    source = RECIPE.read_text()
    drop: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        is_method = isinstance(node, ast.FunctionDef) and node.name == "evaluate"
        uses_it = (
            isinstance(node, ast.stmt)
            and not isinstance(node, ast.FunctionDef)
            and any(
                word in (ast.get_source_segment(source, node) or "")
                for word in ("evaluate()", "{before")
            )
        )
        if is_method or uses_it:
            drop.update(range(node.lineno - 1, node.end_lineno))
    lines = source.splitlines(keepends=True)
    RECIPE.write_text("".join(line for i, line in enumerate(lines) if i not in drop))
    assert "cfg.eval" not in RECIPE.read_text()
    # The section no code reads any more is reported, with how to fix it...
    status, err = _validate(capsys)
    assert status == 2 and err == (
        "error: generated/demo.yaml: eval: no code in demo.py reads this key; remove it, or read "
        "it in the recipe (self.cfg.eval)\n"
    )
    # ...and removing it is all it takes.
    cfg = OmegaConf.load(CONFIG)
    del cfg["eval"]
    CONFIG.write_text(OmegaConf.to_yaml(cfg))
    assert _validate(capsys) == (0, "")


def test_a_new_key_read_by_new_code(demo: Path, capsys) -> None:
    _edit(
        RECIPE,
        "        self.tokenizer = instantiate(self.cfg.tokenizer)\n",
        "        self.tokenizer = instantiate(self.cfg.tokenizer)\n"
        "        self.metric_logger.log_text(self.cfg.training.note)\n",
    )
    status, err = _validate(capsys)
    assert status == 2 and err == (
        "error: generated/demo.yaml: training.note: the recipe reads this key but the config "
        "does not set it\n"
    )
    assert _validate(capsys, "+training.note=hello") == (0, "")
