"""Scripted regeneration histories: spec v1 -> the user's edit -> spec v2 (or a tunegen upgrade)
-> `tunegen update`, through the CLI as a user types it.

The exact expected text of a clean history is the user's edit applied to the new generation: the
update must bring every regeneration change and keep every user edit, and nothing else. Conflicting
histories must leave markers, exit 1, keep every line the user wrote, and keep the old base until
`tunegen update --resolved`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libcst
import pytest
import yaml
from regen_helpers import CONFIG, META, RECIPE, SPEC_V1, edit

from tunegen.compiler.imports import unbound_names
from tunegen.compiler.pipeline import compile_spec

Edit = Callable[[str], str]


def sub(old: str, new: str, count: int = 1) -> Edit:
    """An edit replacing `old`, which must occur `count` times, by `new`."""

    def apply(text: str) -> str:
        assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times"
        return text.replace(old, new)

    return apply


def chain(*edits: Edit) -> Edit:
    def apply(text: str) -> str:
        for one in edits:
            text = one(text)
        return text

    return apply


def same(text: str) -> str:
    return text


# ---- the user's edits of the recipe
ADD_METHOD = sub(
    "    def cleanup(self) -> None:\n",
    "    def describe(self) -> str:\n"
    '        """One line for my logs."""\n'
    '        return f"step {self.global_step} of {self.total_steps}"\n'
    "\n"
    "    def cleanup(self) -> None:\n",
)
LOSS_LINE = sub(
    'metrics = {"loss": loss_sum / max(num_tokens, 1)}',
    'metrics = {"loss": loss_sum / max(num_tokens, 1), "tokens": num_tokens}',
)
LOG_IN_TRAIN = sub(
    "                self.global_step += 1\n",
    "                self.global_step += 1\n"
    '                self.metric_logger.log_text(f"finished step {self.global_step}")\n',
)
ADD_IMPORT = chain(
    sub("import sys\n", "import math\nimport sys\n"),
    sub(
        '                metrics = {"loss": loss_sum / max(num_tokens, 1)}\n',
        '                metrics = {"loss": loss_sum / max(num_tokens, 1)}\n'
        '                metrics["ppl"] = math.exp(metrics["loss"])\n',
    ),
)
DELETE_BLOCK = sub(
    "        if self.steps_per_epoch == 0:\n"
    "            raise ConfigError(\n"
    '                f"dataset: {len(dataset)} samples are too few for one optimizer step "\n'
    '                "(dataloader.batch_size x training.grad_accum)"\n'
    "            )\n",
    "",
)
RENAME_LOCAL = sub(
    "        training = self.cfg.training\n"
    "        # training.max_steps, when set, decides the length; else training.epochs does.\n"
    "        run_length = RunLength.from_config(\n"
    "            epochs=training.epochs,\n"
    "            max_steps=training.max_steps,\n"
    "            steps_per_epoch=self.steps_per_epoch,\n"
    "            batch_size=self.cfg.dataloader.batch_size,\n"
    "            grad_accum=training.grad_accum,\n",
    "        schedule = self.cfg.training\n"
    "        # training.max_steps, when set, decides the length; else training.epochs does.\n"
    "        run_length = RunLength.from_config(\n"
    "            epochs=schedule.epochs,\n"
    "            max_steps=schedule.max_steps,\n"
    "            steps_per_epoch=self.steps_per_epoch,\n"
    "            batch_size=self.cfg.dataloader.batch_size,\n"
    "            grad_accum=schedule.grad_accum,\n",
)
COMMENT_ONLY = sub(
    "# Data first: a bad record should stop the run before any weights are built.",
    "# Data first, so that a malformed record fails fast (my wording).",
)
REFORMAT = sub(
    "        return instantiate(\n"
    "            self.cfg.lr_scheduler,\n"
    "            optimizer=self.optimizer,\n"
    "            total_steps=self.total_steps,\n"
    "        )\n",
    "        return instantiate(self.cfg.lr_scheduler, optimizer=self.optimizer, total_steps=self.total_steps)\n",
)

# ---- the user's edits of the config
CONFIG_VALUE = sub(
    "  keep_last: null  # keep only",
    "  # two are enough on my laptop\n  keep_last: 2  # keep only",
)
CONFIG_COMMENTS = chain(
    sub("# where and how the run computes\n", "# where and how the run computes\n# (my GPU box)\n"),
    lambda text: text + "# my notes: try lr 1e-4 next\n",
)

# ---- spec changes
DORA = sub("method: lora", "method: dora")
FULL = chain(sub("method: lora", "method: full"), sub("lora: {rank: 8, alpha: 16}\n", ""))
ACTIVATION_CKPT = sub("  lr: 3.0e-4\n", "  lr: 3.0e-4\n  activation_checkpointing: true\n")
LR = sub("lr: 3.0e-4", "lr: 1.0e-4")
RANK = sub("rank: 8", "rank: 16")
DATA_FORMAT = sub("max_seq_len: 64}", "format: text, column: output, max_seq_len: 64}")

# A tunegen upgrade: the old templates wrote these lines differently.
UPGRADE_RECIPE = (
    "        trainable = [p for p in self.model.parameters() if p.requires_grad]\n",
    "        trainable = list(filter(lambda p: p.requires_grad, self.model.parameters()))\n",
)
UPGRADE_CONFIG = ("# updates the trainable parameters\n", "# the optimizer\n")


@dataclass(frozen=True)
class History:
    recipe: Edit = same
    config: Edit = same
    spec: Edit = same
    upgrade: bool = False
    args: tuple[str, ...] = field(default=())


HISTORIES = {
    "add_method+dora": History(recipe=ADD_METHOD, spec=DORA),
    "loss_line+activation_checkpointing": History(recipe=LOSS_LINE, spec=ACTIVATION_CKPT),
    "log_in_train+lr": History(recipe=LOG_IN_TRAIN, spec=LR),
    "add_import+full": History(recipe=ADD_IMPORT, spec=FULL),
    "delete_block+data_format": History(recipe=DELETE_BLOCK, spec=DATA_FORMAT),
    "rename_local+dora": History(recipe=RENAME_LOCAL, spec=DORA),
    "comment_only+activation_checkpointing": History(recipe=COMMENT_ONLY, spec=ACTIVATION_CKPT),
    "reformat+lr": History(recipe=REFORMAT, spec=LR),
    "config_value+rank": History(config=CONFIG_VALUE, spec=RANK),
    "add_method+upgrade": History(recipe=ADD_METHOD, upgrade=True),
    "loss_line_and_config+upgrade": History(recipe=LOSS_LINE, config=CONFIG_VALUE, upgrade=True),
    "add_method+full": History(recipe=ADD_METHOD, config=CONFIG_COMMENTS, spec=FULL),
    "several_edits+dora_and_checkpointing": History(
        recipe=chain(ADD_IMPORT, LOG_IN_TRAIN, ADD_METHOD, COMMENT_ONLY),
        config=chain(CONFIG_VALUE, CONFIG_COMMENTS),
        spec=chain(DORA, ACTIVATION_CKPT),
    ),
    "config_comments+lr": History(config=CONFIG_COMMENTS, spec=LR),
    "delete_block+full": History(recipe=DELETE_BLOCK, spec=FULL),
    "comment_only+data_format": History(recipe=COMMENT_ONLY, config=CONFIG_VALUE, spec=DATA_FORMAT),
    "reformat+rank": History(recipe=REFORMAT, spec=RANK),
    "no_edits+dora": History(spec=DORA),
    "rename_local+other_spec_file": History(
        recipe=RENAME_LOCAL, spec=DORA, args=("--spec", "v2.yaml")
    ),
}


def start(cli, history: History) -> None:
    """spec v1, `tunegen new`, then (for an upgrade) the files an older tunegen would have written."""
    Path("my.yaml").write_text(SPEC_V1)
    result = cli("new", "--spec", "my.yaml")
    assert result.status == 0, result.err
    assert "wrote generated/my_recipe.py" in result.out
    if history.upgrade:
        simulate_older_tunegen()


def simulate_older_tunegen() -> None:
    """Make the files and metadata those of a tunegen 0.0.9 whose templates wrote two lines
    differently: the recorded pristine text is the old generation."""
    for path, recorded, (new, old) in (
        (RECIPE, META / "recipe.py.txt", UPGRADE_RECIPE),
        (CONFIG, META / "config.yaml.txt", UPGRADE_CONFIG),
    ):
        text = path.read_text()
        assert text.count(new) == 1 and "tunegen 0.1.0" in text
        text = text.replace(new, old).replace("tunegen 0.1.0", "tunegen 0.0.9")
        path.write_text(text)
        recorded.write_text(text)
    meta = json.loads((META / "tunegen.json").read_text())
    (META / "tunegen.json").write_text(json.dumps({**meta, "tunegen_version": "0.0.9"}))


def apply_user_edits(history: History) -> None:
    RECIPE.write_text(history.recipe(RECIPE.read_text()))
    CONFIG.write_text(history.config(CONFIG.read_text()))
    spec_file = Path(history.args[1]) if history.args else Path("my.yaml")
    spec_file.write_text(history.spec(SPEC_V1))


def new_generation(history: History) -> tuple[str, str]:
    spec_file = history.args[1] if history.args else "my.yaml"
    rendered = compile_spec(Path(spec_file), "generated").rendered
    return rendered.recipe, rendered.config


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_update_keeps_the_edit_and_brings_the_change(name: str, cli, demo_workdir: Path) -> None:
    history = HISTORIES[name]
    start(cli, history)
    apply_user_edits(history)
    recipe, config = new_generation(history)

    result = cli("update", str(RECIPE), *history.args)

    assert result.status == 0, result.err
    assert RECIPE.read_text() == history.recipe(recipe)
    assert CONFIG.read_text() == history.config(config)
    libcst.parse_module(RECIPE.read_text())
    assert (META / "recipe.py.txt").read_text() == recipe  # the new base
    assert (META / "config.yaml.txt").read_text() == config
    assert not (META / "pending").exists()
    preflight = cli("validate", str(CONFIG))
    assert preflight.status == 0, preflight.err
    again = cli("update", str(RECIPE), *history.args)
    assert again.status == 0 and "up to date" in again.out
    assert RECIPE.read_text() == history.recipe(recipe)


@pytest.mark.slow
@pytest.mark.parametrize("name", HISTORIES)
def test_every_merged_recipe_trains_three_steps(name: str, cli, demo_workdir: Path) -> None:
    """Each clean merge is a recipe that runs: `tunegen run` trains it in this process (the
    command runs the recipe in-process, so torch is imported once for all the histories)."""
    history = HISTORIES[name]
    start(cli, history)
    apply_user_edits(history)
    assert cli("update", str(RECIPE), *history.args).status == 0

    result = cli("run", str(RECIPE), "training.max_steps=3", "logging.progress=lines")

    assert result.status == 0, result.err[-3000:]
    assert re.findall(r"^step +(\d+) \| \w+ \d", result.out, re.MULTILINE) == ["1", "2", "3"]
    if history.recipe is LOSS_LINE:
        assert re.search(r"^step +3 \| loss [\d.]+ \| tokens \d+", result.out, re.MULTILINE)
    assert list(Path("runs/my_recipe").glob("step_000003/*.safetensors"))


def test_update_with_unchanged_spec_and_tunegen_is_a_byte_level_noop(cli, demo_workdir: Path):
    start(cli, History())
    apply_user_edits(History(recipe=ADD_METHOD, config=CONFIG_VALUE))
    files = [RECIPE, CONFIG, *sorted(META.rglob("*"))]
    before = {path: (path.read_bytes(), os.stat(path).st_mtime_ns) for path in files}

    result = cli("update", str(RECIPE))

    assert result.status == 0 and result.err == ""
    assert result.out == "generated/my_recipe.py and generated/my_recipe.yaml are up to date\n"
    assert sorted(META.rglob("*")) == files[2:]
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files} == before


def test_dry_run_prints_the_diff_and_changes_nothing(cli, demo_workdir: Path) -> None:
    start(cli, History())
    apply_user_edits(History(recipe=ADD_METHOD, spec=RANK))
    before = {p: p.read_bytes() for p in [RECIPE, CONFIG, *META.rglob("*")] if p.is_file()}

    result = cli("update", str(RECIPE), "--dry-run")

    assert result.status == 0, result.err
    assert result.out.startswith(
        "--- generated/my_recipe.py (now)\n+++ generated/my_recipe.py (after"
    )
    assert "-  rank: 8  # rank r of the low-rank update B @ A\n" in result.out
    assert "+  rank: 16  # rank r of the low-rank update B @ A\n" in result.out
    assert "def describe" not in result.out  # the user's method is no change
    assert {p: p.read_bytes() for p in before} == before


def test_diff_prints_the_users_edits_of_recipe_and_config(cli, demo_workdir: Path) -> None:
    start(cli, History())
    clean = cli("diff", str(RECIPE))
    assert clean.status == 0
    assert clean.out == (
        "no edits: generated/my_recipe.py and generated/my_recipe.yaml are as tunegen generated them\n"
    )
    apply_user_edits(History(recipe=LOG_IN_TRAIN, config=CONFIG_VALUE))

    result = cli("diff", str(RECIPE))

    assert result.status == 0
    assert result.out.count("--- ") == 2
    assert "--- generated/my_recipe.py (generated by tunegen 0.1.0)\n" in result.out
    assert "+++ generated/my_recipe.py (yours)\n" in result.out
    assert (
        '+                self.metric_logger.log_text(f"finished step {self.global_step}")\n'
        in result.out
    )
    assert "+  # two are enough on my laptop\n+  keep_last: 2" in result.out
    assert "-  keep_last: null" in result.out


def test_new_on_an_existing_file_points_at_update(cli, demo_workdir: Path) -> None:
    start(cli, History())
    result = cli("new", "--spec", "my.yaml")
    assert result.status == 2 and result.err.count("\n") == 1
    assert "`tunegen update generated/my_recipe.py`" in result.err
    assert "--force" in result.err


def test_metadata_records_spec_version_and_pristine_files(cli, demo_workdir: Path) -> None:
    start(cli, History())
    meta = json.loads((META / "tunegen.json").read_text())
    assert meta == {
        "tunegen_version": "0.1.0",
        "spec": "../../../my.yaml",
        "working_dir": "../../..",
        "recipe": "my_recipe.py",
        "config": "my_recipe.yaml",
    }
    assert (META / "spec.yaml").read_text() == SPEC_V1
    assert (META / "recipe.py.txt").read_text() == RECIPE.read_text()
    assert (META / "config.yaml.txt").read_text() == CONFIG.read_text()


def test_update_from_another_directory_and_a_moved_clone(cli, demo_workdir: Path, monkeypatch):
    """Paths are relative to the metadata folder: a copy of the project elsewhere still updates,
    from any working directory, with the same result."""
    start(cli, History())
    apply_user_edits(History(recipe=ADD_METHOD, spec=LR))
    clone = demo_workdir.parent / "clone"
    os.rename(demo_workdir, clone)
    monkeypatch.chdir(clone / "generated")
    result = cli("update", "my_recipe.py")
    assert result.status == 0, result.err
    monkeypatch.chdir(clone)
    recipe, config = new_generation(History())
    assert RECIPE.read_text() == ADD_METHOD(recipe)
    assert CONFIG.read_text() == config


# ---- conflicts


@dataclass(frozen=True)
class Clash:
    history: History
    where: str  # the `in ...` of the conflict line


CONFLICTS = {
    "config_lr_both_changed": Clash(
        History(config=sub("  lr: 0.0003", "  lr: 0.001"), spec=LR), "training.lr"
    ),
    "lora_dropout_next_to_dora": Clash(
        History(recipe=sub("dropout=self.cfg.lora.dropout,", "dropout=0.1,"), spec=DORA),
        "DoRAFinetuneRecipe._setup_model",
    ),
    "deleted_method_changed_by_spec": Clash(
        History(
            recipe=lambda text: re.sub(
                r"\n    def _setup_model\(self\).*?\n\n(?=    def )", "\n", text, flags=re.S
            ),
            spec=ACTIVATION_CKPT,
        ),
        "LoRAFinetuneRecipe._setup_model",
    ),
    "model_line_where_checkpointing_goes": Clash(
        History(
            recipe=sub(
                "        model = instantiate(self.cfg.model)\n",
                "        model = instantiate(self.cfg.model).float()\n",
            ),
            spec=ACTIVATION_CKPT,
        ),
        "LoRAFinetuneRecipe._setup_model",
    ),
    "export_edited_spec_goes_full": Clash(
        History(
            recipe=sub(
                "adapter in PEFT format: {export.output_dir}",
                "adapter saved to {export.output_dir}",
            ),
            spec=FULL,
        ),
        "FullFinetuneRecipe.export_model",
    ),
}

CONFLICT_LINE = re.compile(r"^generated/my_recipe\.(py|yaml):(\d+): in (\S+): conflict \(.+\)$")


@pytest.mark.parametrize("name", sorted(CONFLICTS))
def test_overlapping_edits_are_conflicts_with_markers(name: str, cli, demo_workdir: Path) -> None:
    clash = CONFLICTS[name]
    start(cli, clash.history)
    base = (META / "recipe.py.txt").read_text(), (META / "config.yaml.txt").read_text()
    apply_user_edits(clash.history)
    ours = RECIPE.read_text() + CONFIG.read_text()

    result = cli("update", str(RECIPE))

    assert result.status == 1, result.err
    lines = result.err.splitlines()
    conflicts = [CONFLICT_LINE.match(line) for line in lines[:-1]]
    assert all(conflicts) and [m.group(3) for m in conflicts] == [clash.where], result.err
    assert lines[-1].endswith("then run `tunegen update generated/my_recipe.py --resolved`")
    match = conflicts[0]
    path = RECIPE if match.group(1) == "py" else CONFIG
    assert path.read_text().splitlines()[int(match.group(2)) - 1] == "<<<<<<< yours"
    merged = RECIPE.read_text() + CONFIG.read_text()
    for marker in ("||||||| generated 0.1.0", "=======", ">>>>>>> generated 0.1.0"):
        assert f"\n{marker}\n" in merged
    written = set(ours.splitlines()) - set("".join(base).splitlines())
    assert written <= set(merged.splitlines())  # every line the user wrote
    assert ((META / "recipe.py.txt").read_text(), (META / "config.yaml.txt").read_text()) == base

    second = cli("update", str(RECIPE))
    assert second.status == 2 and second.err.count("\n") == 1 and "--resolved" in second.err
    early = cli("update", str(RECIPE), "--resolved")
    assert early.status == 2 and "conflict markers are still there" in early.err

    take_yours(path)
    done = cli("update", str(RECIPE), "--resolved")
    assert done.status == 0, done.err
    recipe, config = new_generation(clash.history)
    assert (META / "recipe.py.txt").read_text() == recipe
    assert (META / "config.yaml.txt").read_text() == config
    assert not (META / "pending").exists()
    after = cli("update", str(RECIPE))
    assert after.status == 0 and "up to date" in after.out


def take_yours(path: Path) -> None:
    """Resolve every conflict in `path` by keeping the user's side."""
    out, state = [], "plain"
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("<<<<<<< "):
            state = "ours"
        elif line.startswith("||||||| "):
            state = "skip"
        elif line.startswith(">>>>>>> "):
            state = "plain"
        elif state in ("plain", "ours"):
            out.append(line)
    path.write_text("".join(out))


# ---- refusals: exit 2, one line, nothing touched


def test_update_refuses_a_recipe_that_does_not_parse(cli, demo_workdir: Path) -> None:
    start(cli, History())
    edit(RECIPE, "    def cleanup(self) -> None:\n", "    def cleanup(self) -> None\n")
    Path("my.yaml").write_text(LR(SPEC_V1))
    before = RECIPE.read_bytes(), CONFIG.read_bytes()
    result = cli("update", str(RECIPE))
    assert result.status == 2 and result.err.count("\n") == 1
    assert result.err.startswith("error: generated/my_recipe.py:")
    assert "does not parse" in result.err
    assert (RECIPE.read_bytes(), CONFIG.read_bytes()) == before


def test_update_refuses_without_metadata_or_with_another_files_metadata(cli, demo_workdir: Path):
    start(cli, History())
    os.rename(META, META.with_name("other"))
    missing = cli("update", str(RECIPE))
    assert missing.status == 2 and missing.err.count("\n") == 1
    assert "no tunegen metadata (generated/.tunegen/my_recipe/ is missing)" in missing.err
    os.rename(META.with_name("other"), META)
    os.rename(RECIPE, "generated/renamed.py")
    os.rename(META, META.with_name("renamed"))
    wrong = cli("update", "generated/renamed.py")
    assert wrong.status == 2 and "is for my_recipe.py, not this file" in wrong.err


def test_update_refuses_a_spec_that_generates_another_file(cli, demo_workdir: Path) -> None:
    start(cli, History())
    Path("other.yaml").write_text(SPEC_V1.replace("name: my_recipe", "name: other"))
    result = cli("update", str(RECIPE), "--spec", "other.yaml")
    assert result.status == 2 and result.err.count("\n") == 1
    assert "set name: my_recipe in it" in result.err
    assert yaml.safe_load(CONFIG.read_text())["training"]["lr"] == 0.0003


def test_new_force_after_a_conflicting_update_starts_afresh(cli, demo_workdir: Path) -> None:
    history = CONFLICTS["config_lr_both_changed"].history
    start(cli, history)
    apply_user_edits(history)
    assert cli("update", str(RECIPE)).status == 1
    assert (META / "pending").is_dir()

    forced = cli("new", "--spec", "my.yaml", "--force")

    assert forced.status == 0, forced.err
    assert not (META / "pending").exists()
    assert (META / "config.yaml.txt").read_text() == CONFIG.read_text()
    assert cli("update", str(RECIPE)).out.endswith("are up to date\n")


def test_resolving_in_favour_of_code_the_spec_dropped_restores_its_import(cli, demo_workdir):
    """Spec v1 has activation checkpointing, the user edits the line next to it, spec v2 drops it:
    a conflict. The user keeps their side, which calls enable_activation_checkpointing, whose
    import the merge dropped with the new generation; --resolved puts the import back."""
    Path("my.yaml").write_text(ACTIVATION_CKPT(SPEC_V1))
    assert cli("new", "--spec", "my.yaml").status == 0
    edit(
        RECIPE,
        "model = instantiate(self.cfg.model)\n",
        "model = instantiate(self.cfg.model)  # mine\n",
    )
    Path("my.yaml").write_text(SPEC_V1)
    assert cli("update", str(RECIPE)).status == 1
    assert "import enable_activation_checkpointing" not in RECIPE.read_text()
    take_yours(RECIPE)

    result = cli("update", str(RECIPE), "--resolved")

    assert result.status == 0, result.err
    assert result.out.startswith(
        "updated generated/my_recipe.py: added the imports your resolved code uses\n"
    )
    text = RECIPE.read_text()
    assert "from tunegen.runtime.memory import enable_activation_checkpointing\n" in text
    assert "        enable_activation_checkpointing(model)\n" in text
    assert not unbound_names(text)


def test_update_keeps_the_files_mode(cli, demo_workdir: Path) -> None:
    start(cli, History())
    RECIPE.chmod(0o750)
    Path("my.yaml").write_text(DORA(SPEC_V1))
    assert cli("update", str(RECIPE)).status == 0
    assert RECIPE.stat().st_mode & 0o777 == 0o750
    assert "DoRAFinetuneRecipe" in RECIPE.read_text()


def test_a_crlf_recipe_merges_and_keeps_its_line_ends(cli, demo_workdir: Path) -> None:
    start(cli, History())
    RECIPE.write_bytes(ADD_METHOD(RECIPE.read_text()).replace("\n", "\r\n").encode())
    Path("my.yaml").write_text(DORA(SPEC_V1))
    recipe, _ = new_generation(History(spec=DORA))

    assert cli("update", str(RECIPE)).status == 0

    assert RECIPE.read_bytes() == ADD_METHOD(recipe).replace("\n", "\r\n").encode()


def test_dry_run_of_a_conflicting_update_exits_1_and_writes_nothing(cli, demo_workdir: Path):
    history = CONFLICTS["config_lr_both_changed"].history
    start(cli, history)
    apply_user_edits(history)
    before = CONFIG.read_bytes()

    result = cli("update", str(RECIPE), "--dry-run")

    assert result.status == 1
    assert "+<<<<<<< yours\n" in result.out
    assert result.err.splitlines()[-1] == (
        "update would stop: 1 conflict; resolve the marked lines"
    )
    assert CONFIG.read_bytes() == before and not (META / "pending").exists()
