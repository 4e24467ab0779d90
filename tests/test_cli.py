"""The `tunegen` command: new, validate, run, ls, cp; exit code 2 and one line for bad input.

Most tests run the command in this process, as the console script does (`main()` with
`sys.argv`); the ones that train (marked slow) run it as a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli_in_process
from helpers import tunegen as tunegen_subprocess
from helpers import tunegen_in_process as tunegen

from tunegen.compiler.cli import builtin_specs
from tunegen.runtime.errors import TunegenError

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


@pytest.mark.slow
def test_run_applies_overrides_and_trains(demo_workdir):
    Path("spec.yaml").write_text(SPEC)
    assert tunegen_subprocess("new", "--spec", "spec.yaml").returncode == 0
    result = tunegen_subprocess(
        "run", "generated/cli_recipe.py", "training.max_steps=2", "training.lr=1e-3"
    )
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


def test_cp_makes_every_file_reference_absolute(workdir):
    """The copy lives elsewhere: validation data, reward files and a model dir given as a path
    must still point at the built-in spec's files."""
    assert tunegen("cp", "demo", "demo.yaml").returncode == 0
    assert tunegen("validate", "demo.yaml").returncode == 0
    demo = yaml.safe_load(Path("demo.yaml").read_text())
    assert Path(demo["data"]["val_path"]).is_absolute()
    assert tunegen("cp", "grpo", "grpo.yaml").returncode == 0
    grpo = yaml.safe_load(Path("grpo.yaml").read_text())
    assert Path(grpo["model"]).is_absolute()
    rewards = [r if isinstance(r, str) else r["function"] for r in grpo["reward"]]
    assert len(rewards) == 2
    for reference in rewards:
        path, _, function = reference.rpartition(":")
        assert Path(path).is_absolute() and Path(path).is_file(), reference
        assert function in {"exact_match", "word_overlap"}


TEXT_SPEC = """\
name: text_recipe
method: full
model: tiny
data: {path: data/notes.jsonl, format: text, column: body, max_seq_len: 32}
training: {max_steps: 4, batch_size: 2, lr: 1e-3, chunked_loss: false}
"""
# chunked_loss: false compiles the recipe to call the loss on logits, (logits, labels), which is
# the interface a user's own loss below has; the default chunked recipe passes it the hidden
# states and the output weight instead.

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


@pytest.mark.slow
def test_text_data_and_a_user_component_from_the_working_directory(workdir):
    Path("data").mkdir()
    rows = [
        f'{{"body": "note {i}: the cat sat on the mat and = signs are fine"}}' for i in range(8)
    ]
    Path("data/notes.jsonl").write_text("\n".join(rows) + "\n")
    Path("my_loss.py").write_text(MY_LOSS)
    Path("spec.yaml").write_text(TEXT_SPEC)
    assert tunegen_subprocess("new", "--spec", "spec.yaml").returncode == 0
    config = Path("generated/text_recipe.yaml").read_text()
    assert "tunegen.runtime.data.TextDataset" in config and "column: body" in config

    result = tunegen_subprocess(
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

    result = tunegen_subprocess(
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


# -- paths: relative to the spec, then to the config, whatever the working directory -------------

PROJECT_SPEC = """\
name: moved
method: full
model: tiny
data: {path: ../data/train.jsonl, template: plain, max_seq_len: 64}
training: {max_steps: 1, batch_size: 2}
checkpoint: {output_dir: ../runs/moved}
"""


def _project(root: Path) -> Path:
    """root/specs/moved.yaml naming root/data/train.jsonl and root/runs/moved, relative to it."""
    (root / "specs").mkdir(parents=True)
    (root / "data").mkdir()
    rows = [f'{{"instruction": "say {i}", "output": "ok"}}' for i in range(4)]
    (root / "data/train.jsonl").write_text("\n".join(rows) + "\n")
    (root / "specs/moved.yaml").write_text(PROJECT_SPEC)
    return root / "specs/moved.yaml"


def test_spec_paths_are_relative_to_the_spec_and_config_paths_to_the_config(workdir):
    spec = _project(workdir / "project")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    status, _, err = cli_in_process(
        "new", "--spec", str(spec), "-o", "generated", cwd=workdir / "project"
    )
    assert status == 0, err
    config = yaml.safe_load((workdir / "project/generated/moved.yaml").read_text())
    assert config["dataset"]["source"] == "../data/train.jsonl"
    assert config["checkpointer"]["output_dir"] == "../runs/moved"
    # Compiled from another directory, the spec's paths still mean the same files (outside the
    # working directory, the config holds them absolute).
    status, _, err = cli_in_process(
        "new", "--spec", str(spec), "-o", str(workdir / "gen2"), cwd=elsewhere
    )
    assert status == 0, err
    config = yaml.safe_load((workdir / "gen2/moved.yaml").read_text())
    assert config["dataset"]["source"] == (workdir / "project/data/train.jsonl").as_posix()
    assert config["checkpointer"]["output_dir"] == (workdir / "project/runs/moved").as_posix()
    # The config is valid, and its data found, from any working directory.
    for cwd in (elsewhere, workdir / "project/generated", workdir):
        status, out, err = cli_in_process(
            "validate", str(workdir / "project/generated/moved.yaml"), cwd=cwd
        )
        assert status == 0, (cwd, err)
        assert "data: 4 samples" in out


@pytest.mark.slow
def test_a_generated_recipe_runs_from_another_directory(workdir):
    spec = _project(workdir / "project")
    assert tunegen_subprocess("new", "--spec", str(spec), cwd=workdir / "project").returncode == 0
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    ran = tunegen_subprocess("run", "../project/generated/moved.py", cwd=elsewhere)
    assert ran.returncode == 0, ran.stderr
    assert (workdir / "project/runs/moved/step_000001/model.safetensors").is_file()
    # `python recipe.py --config`: the config's paths hold; an override's path is the shell's.
    recipe = workdir / "project/generated/moved.py"
    alone = subprocess.run(
        [
            sys.executable,
            str(recipe),
            "--config",
            str(recipe.with_suffix(".yaml")),
            "checkpointer.output_dir=out",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert alone.returncode == 0, alone.stderr
    assert (elsewhere / "out/step_000001/model.safetensors").is_file()
    assert not (workdir / "project/generated/out").exists()


# -- the command line itself ----------------------------------------------------------------------


def test_help_shows_flags_and_metavars_as_users_expect():
    new = cli_in_process("new", "--help")[1]
    assert re.search(r"^  --force +Overwrite", new, re.MULTILINE), new
    assert "-s, --spec FILE" in new and "<bool>" not in new and "<str>" not in new
    run = cli_in_process("run", "--help")[1]
    assert "-c, --config PATH" in run and "[KEY=VALUE]..." in run
    for example in ("key.sub=value", "+key.sub=value", "~key.sub", "tunegen run generated/"):
        assert example in run, run


def test_debug_is_accepted_before_and_after_every_command(workdir):
    Path("empty.yaml").write_text("")
    assert cli_in_process("validate", "empty.yaml")[0] == 2
    for argv in (["--debug", "validate", "empty.yaml"], ["validate", "empty.yaml", "--debug"]):
        with pytest.raises(TunegenError, match="the file is empty"):  # the traceback shows
            cli_in_process(*argv)
    for command in ("new", "validate", "run", "data", "ls", "cp"):
        assert "--debug" in cli_in_process(command, "--help")[1], command
    assert cli_in_process("ls", "--debug")[0] == 0


def test_usage_errors_are_one_line_naming_the_command_typed(workdir):
    status, _, err = cli_in_process("run", "generated/x.py", "training.lr=1", "--lr")
    assert (status, err) == (
        2,
        "error: tunegen run: no such option '--lr' (see tunegen run --help)\n",
    )
    status, _, err = cli_in_process("new", "--spce", "x.yaml")
    assert status == 2 and err.startswith("error: tunegen new: No such option: --spce")
    assert err.count("\n") == 1
