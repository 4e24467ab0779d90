"""The `tunegen` command: new, validate, run, ls, cp; exit code 2 and one line for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from helpers import tunegen

from tunegen.compiler.cli import builtin_specs

SPEC = """\
name: cli_recipe
method: lora
model: tiny
data: {path: data/demo_train.jsonl, max_seq_len: 64}
training: {max_steps: 3, batch_size: 2}
logging: {every_n_steps: 1}
"""


def test_new_writes_recipe_and_config_then_refuses_to_overwrite(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    first = tunegen("new", "--spec", "spec.yaml")
    assert first.returncode == 0, first.stderr
    assert "wrote generated/cli_recipe.py" in first.stdout
    recipe = Path("generated/cli_recipe.py")
    recipe.write_text(recipe.read_text() + "\n# my edit\n")

    again = tunegen("new", "--spec", "spec.yaml")
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert recipe.read_text().endswith("# my edit\n")  # the user's edit survives

    forced = tunegen("new", "--spec", "spec.yaml", "--force")
    assert forced.returncode == 0 and "# my edit" not in recipe.read_text()


def test_invalid_spec_exits_2_with_one_line_and_writes_nothing(demo_workdir):
    Path("spec.yaml").write_text(SPEC.replace("max_steps: 3", "max_step: 3"))
    result = tunegen("new", "--spec", "spec.yaml")
    assert result.returncode == 2
    assert result.stderr == (
        "error: spec.yaml:5: training.max_step: unknown key; did you mean 'max_steps'?\n"
    )
    assert not Path("generated").exists()


def test_run_applies_overrides_and_trains(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    result = tunegen("run", "generated/cli_recipe.py", "training.max_steps=2", "training.lr=1e-3")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^step +2 \| loss \d", result.stdout, re.MULTILINE), result.stdout
    assert Path("runs/cli_recipe/step_000002/adapter.safetensors").is_file()


def test_run_with_a_typo_override_is_one_line_exit_2(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    result = tunegen("run", "generated/cli_recipe.py", "trainng.max_steps=2")
    assert result.returncode == 2
    assert "did you mean 'training'" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_spec_and_config(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    ok = tunegen("validate", "spec.yaml")
    assert ok.returncode == 0, ok.stderr
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    ok = tunegen("validate", "generated/cli_recipe.yaml")
    assert ok.returncode == 0, ok.stderr


def test_validate_reports_typo_nested_argument_and_missing_file_together(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    config_path = Path("generated/cli_recipe.yaml")
    cfg = yaml.safe_load(config_path.read_text())
    cfg["training"]["max_stepz"] = cfg["training"].pop("max_steps")  # a typo'd key
    cfg["logging"]["metric_logger"]["log_dri"] = "x"  # a nested component's wrong argument
    cfg["dataset"]["source"] = "data/missing.jsonl"  # a missing file
    config_path.write_text(yaml.safe_dump(cfg))
    result = tunegen("validate", str(config_path))
    assert result.returncode == 2
    text = result.stderr
    assert "training.max_stepz" in text
    assert "logging.metric_logger.log_dri" in text
    assert "dataset.source" in text and "data/missing.jsonl" in text
    assert "Traceback" not in text


def test_ls_and_cp(workdir):
    listing = tunegen("ls")
    assert listing.returncode == 0
    for name in builtin_specs():
        assert name in listing.stdout
    copied = tunegen("cp", "lora", "my_lora.yaml")
    assert copied.returncode == 0, copied.stderr
    assert tunegen("validate", "my_lora.yaml").returncode == 0  # data paths still resolve
    assert tunegen("cp", "lora", "my_lora.yaml").returncode == 2  # no silent overwrite
    assert tunegen("cp", "nope", "x.yaml").returncode == 2


TEXT_SPEC = """\
name: text_recipe
method: full
model: tiny
data: {path: data/notes.jsonl, format: text, column: body, max_seq_len: 32}
training: {max_steps: 4, batch_size: 2, lr: 1e-3}
"""

MY_LOSS = '''\
import torch
from tunegen.runtime.losses import CrossEntropyLoss


class ScaledLoss(CrossEntropyLoss):
    """A user's own loss, living next to their config."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits, labels):
        loss_sum, num_tokens = super().forward(logits, labels)
        return loss_sum * self.scale, num_tokens
'''


def test_text_data_and_a_user_component_from_the_working_directory(workdir):
    Path("data").mkdir()
    rows = [
        f'{{"body": "note {i}: the cat sat on the mat and = signs are fine"}}' for i in range(8)
    ]
    Path("data/notes.jsonl").write_text("\n".join(rows) + "\n")
    Path("my_loss.py").write_text(MY_LOSS)
    Path("spec.yaml").write_text(TEXT_SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    config = Path("generated/text_recipe.yaml").read_text()
    assert "tunegen.runtime.data.TextDataset" in config and "column: body" in config

    result = tunegen(
        "run",
        "generated/text_recipe.py",
        "loss._component_=my_loss.ScaledLoss",
        "+loss.scale=0.5",
        "+run_note=a=b",  # values may contain '='
    )
    # run_note is read by no code, so the pre-flight refuses it: added keys are checked too
    assert (
        result.returncode == 2
        and (
            "run_note: no code in text_recipe.py reads this key; remove it, or read it in the recipe"
            " (self.cfg.run_note)"
        )
        in result.stderr
    )

    result = tunegen(
        "run", "generated/text_recipe.py", "loss._component_=my_loss.ScaledLoss", "+loss.scale=0.5"
    )
    assert result.returncode == 0, result.stderr
    assert Path("runs/text_recipe/step_000004/model.safetensors").is_file()


def test_usage_errors_exit_2(workdir):
    assert tunegen("new").returncode == 2
    assert tunegen("frobnicate").returncode == 2
    missing = tunegen("new", "--spec", "nope.yaml")
    assert missing.returncode == 2 and missing.stderr == "error: nope.yaml: spec file not found\n"
    assert tunegen("run", "nope.py").returncode == 2


def test_interpolated_training_keys_are_type_checked(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    assert tunegen("new", "--spec", "spec.yaml").returncode == 0
    bad = tunegen("validate", "generated/cli_recipe.yaml", "training.lr=fast")
    # Checked with the spec's rule for training.lr, once, where the value is written.
    assert bad.returncode == 2
    assert bad.stderr == (
        "error: generated/cli_recipe.yaml: training.lr: expected a number, got a string ('fast')\n"
    )
    ok = tunegen(
        "validate", "generated/cli_recipe.yaml", "training.lr=1e-4", "training.batch_size=8"
    )
    assert ok.returncode == 0, ok.stderr
