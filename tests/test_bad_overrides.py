"""The bad-override corpus: every type, range, choice and pattern rule of the spec schema, applied
to each config key that holds a spec value, through the CLI as a user types it.

Each case runs `tunegen validate CONFIG KEY=VALUE` and `tunegen run RECIPE KEY=VALUE` in this
process and expects exit status 2, exactly one `error:` line naming the key and the rule in the
spec's own words, no traceback, and nothing built (no run directory). The cases are derived from
the schema (`CONFIG_KEYS` and each field's annotation and bounds), and the expected words are
spelled out here, so a rule that stops being enforced, or changes its wording, fails.
"""

from __future__ import annotations

import json
import os
import shutil
import typing
from pathlib import Path
from typing import Literal

import pytest
import torch
from helpers import tunegen_status as _call

from tunegen.compiler.schema import CONFIG_KEYS, bounds_of, field_at, strip_optional

REPO = Path(__file__).resolve().parents[1]
DATA = "data: {path: data/demo_train.jsonl, max_seq_len: 64}\n"
SPECS = {
    # Every config key of the table is in at least one of these configs.
    "adapters": (
        "name: adapters\nmethod: lora\nmodel: tiny\n"
        + DATA.replace("}", ", val_path: data/demo_heldout.jsonl}")
        + "lora: {rank: 4}\n"
        "training: {max_steps: 1, batch_size: 2, val_every_n_steps: 1, val_max_batches: 1}\n"
        "checkpoint: {save_every_n_steps: 1, keep_last: 1, keep_best: val_loss}\n"
        "eval: {path: data/demo_heldout.jsonl}\nprofiler: {}\n"
    ),
    "text": (
        "name: text\nmethod: full\nmodel: tiny\n"
        "data: {path: data/demo_train.jsonl, format: text, column: output,"
        " val_path: data/demo_heldout.jsonl}\n"
    ),
    "pref": (
        "name: pref\nmethod: dpo\nmodel: tiny\n"
        "data: {path: data/demo_preference.jsonl, format: preference, val_split: 0.1}\n"
    ),
    "distil": ("name: distil\nmethod: kd\nmodel: ckpt\n" + DATA + "kd: {teacher: ckpt}\n"),
    "budget": (
        "name: budget\nmethod: full\nmodel: tiny\n" + DATA + "training: {tokens_per_batch: 128}\n"
    ),
    "rl": (
        "name: rl\nmethod: grpo\nmodel: tiny\n"
        "data: {path: data/grpo_prompts.jsonl, format: prompts}\n"
        f"reward: ['{(REPO / 'specs' / 'grpo_rewards.py').as_posix()}:exact_match']\n"
    ),
    "dist": (
        "name: dist\nmethod: full\nmodel: tiny\n"
        + DATA
        + "distributed: {nproc_per_node: 2, nnodes: 2, rdzv_endpoint: 'node0:29500'}\n"
    ),
}


def _write_checkpoint_stand_in(folder: Path) -> None:
    """What compiling and the pre-flight read of a checkpoint dir: config.json and a tokenizer."""
    from tunegen.runtime.hf_checkpoint import hf_config_for
    from tunegen.runtime.models import tiny
    from tunegen.runtime.tokenizers.sentencepiece import builtin_tokenizer_path

    folder.mkdir()
    with torch.device("meta"):
        (folder / "config.json").write_text(json.dumps(hf_config_for(tiny())))
    shutil.copyfile(builtin_tokenizer_path("tiny"), folder / "tokenizer.model")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A working dir with each spec compiled; maps each config key to the recipe holding it."""
    root = tmp_path_factory.mktemp("overrides")
    shutil.copytree(REPO / "specs" / "data", root / "data")
    _write_checkpoint_stand_in(root / "ckpt")
    saved = Path.cwd()
    os.chdir(root)
    try:
        holder: dict[str, str] = {}
        for name, text in SPECS.items():
            Path(f"{name}.yaml").write_text(text)
            assert _call(["new", "--spec", f"{name}.yaml"]) == 0
            from omegaconf import OmegaConf

            cfg = OmegaConf.load(f"generated/{name}.yaml")
            for key in CONFIG_KEYS:
                if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
                    holder.setdefault(key, name)
        holder["<root>"] = str(root)
    finally:
        os.chdir(saved)
    return holder


def _rules(spec_key: str) -> list[tuple[str, str, str]]:
    """`(name, bad override value, expected words)` for every rule of a spec key."""
    _, field = field_at(tuple(spec_key.split(".")))
    hint = strip_optional(field.annotation)
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    rules = []
    if typing.get_origin(hint) is Literal:
        choices = ", ".join(typing.get_args(hint))
        rules.append(("choice", "nope", f"'nope' is not one of {choices}"))
    elif typing.get_origin(hint) is list:
        rules.append(("item_type", "[q_proj,3]", "[1]: expected a string, got an integer (3)"))
        rules.append(("type", "q_proj", "expected a list of a string, got a string ('q_proj')"))
    elif hint is int:
        rules.append(("type", "abc", "expected an integer, got a string ('abc')"))
        rules.append(("type_float", "2.5", "expected an integer, got a number (2.5)"))
    elif hint is float:
        rules.append(("type", "abc", "expected a number, got a string ('abc')"))
    elif hint is bool:
        rules.append(("type", "3", "expected true or false, got an integer (3)"))
    elif hint is str and field.metadata:  # a pattern
        rules.append(("pattern", "gpu", f"'gpu' is not {field.description}"))
    elif hint is str:
        rules.append(("type", "3", "expected a string, got an integer (3)"))
    else:  # bool | str
        rules.append(("type", "3", "expected true or false or a string, got an integer (3)"))
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    for name, bound in bounds_of(field).items():
        step = 1 if hint is int else 0.5
        bad = {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[name]
        bad = int(bad) if hint is int else float(bad)
        rules.append((name, repr(bad), f"must be {words[name]} {bound:g}, got {bad!r}"))
    return rules


def _interpolated_keys() -> set[str]:
    """Config keys that generated configs fill by interpolation (`dataloader.batch_size:
    ${training.batch_size}`): the key holding the value is checked, and has its own cases."""
    from omegaconf import OmegaConf

    found = set()
    for golden in (REPO / "tests" / "golden").glob("*.yaml"):
        cfg = OmegaConf.load(golden)
        for key in CONFIG_KEYS:
            section, _, name = key.rpartition(".")
            node = OmegaConf.select(cfg, section) if section else cfg
            if node is not None and name in node and node._get_node(name)._is_interpolation():
                found.add(key)
    return found


INTERPOLATED = _interpolated_keys()
CASES = [
    pytest.param(key, value, expected, id=f"{key}-{rule}")
    for key, spec_key in CONFIG_KEYS.items()
    if key not in INTERPOLATED
    for rule, value, expected in _rules(spec_key)
]


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("key", "value", "expected"), CASES)
def test_bad_override_is_one_line_naming_key_and_rule(
    compiled: dict[str, str], command: str, key: str, value: str, expected: str, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(compiled["<root>"])
    name = compiled[key]
    target = f"generated/{name}.yaml" if command == "validate" else f"generated/{name}.py"
    capsys.readouterr()
    status = _call([command, target, f"{key}={value}"])
    out, err = capsys.readouterr()
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    assert err.count("\n") == 1 and err.startswith("error: "), err
    where = f"{key}{expected}" if expected.startswith("[") else f"{key}: {expected}"
    assert err == f"error: generated/{name}.yaml: {where}\n"
    assert "Traceback" not in out + err
    assert not Path("runs").exists(), "nothing may be built or written"


def test_every_config_key_is_covered(compiled: dict[str, str]) -> None:
    assert set(CONFIG_KEYS) <= set(compiled), set(CONFIG_KEYS) - set(compiled)
    assert {
        "dataloader.batch_size",
        "optimizer.lr",
        "optimizer.weight_decay",
        "lr_scheduler.warmup_steps",
        # the validation data is read as the training data is (specs/demo.yaml has one)
        "val_dataset.template",
        "val_dataset.train_on_input",
        "val_dataset.max_seq_len",
        "val_dataset.max_dropped_fraction",
        # grpo: the loss and the prompt data read the grpo section's values
        "loss.variant",
        "loss.epsilon",
        "loss.kl_beta",
        "loss.max_new_tokens",
        "loss.mask_truncated",
        "dataset.max_new_tokens",
    } == INTERPOLATED
    assert len(CASES) >= 80


def test_a_value_written_over_an_interpolation_keeps_the_rule(
    compiled: dict[str, str], capsys, monkeypatch
) -> None:
    """`dataloader.batch_size=0` replaces `${training.batch_size}`: the value is checked where it
    now is, and training.batch_size, which nothing reads any more, is reported too."""
    monkeypatch.chdir(compiled["<root>"])
    capsys.readouterr()
    assert _call(["validate", "generated/adapters.yaml", "dataloader.batch_size=0"]) == 2
    assert capsys.readouterr().err == (
        "error: generated/adapters.yaml: dataloader.batch_size: must be at least 1, got 0\n"
        "generated/adapters.yaml: training.batch_size: no code in adapters.py reads this key; "
        "remove it, or read it in the recipe (self.cfg.training.batch_size)\n"
    )


def test_a_renamed_key_is_reported_with_every_interpolation_that_misses_it(
    compiled: dict[str, str], capsys, monkeypatch
) -> None:
    """Renaming training.batch_size in a config breaks `${training.batch_size}`; the misspelt key
    itself, which no code reads, is reported in the same run with a did-you-mean."""
    monkeypatch.chdir(compiled["<root>"])
    text = Path("generated/adapters.yaml").read_text()
    assert "  batch_size: 2 " in text
    # Beside the original: a config's relative paths are relative to its own folder.
    Path("generated/renamed.yaml").write_text(text.replace("  batch_size: 2 ", "  batch_sizex: 2 "))
    capsys.readouterr()
    assert _call(["validate", "generated/renamed.yaml", "--recipe", "generated/adapters.py"]) == 2
    assert capsys.readouterr().err == (
        "error: generated/renamed.yaml: dataloader.batch_size: cannot resolve '${training.batch_size}' "
        "(Interpolation key 'training.batch_size' not found)\n"
        "generated/renamed.yaml: training.batch_sizex: no code in adapters.py reads this key; "
        "did you mean 'training.batch_size'?\n"
    )
