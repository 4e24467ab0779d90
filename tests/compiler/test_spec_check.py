"""Every kind of bad spec gives one located line per problem, and nothing is written."""

from __future__ import annotations

import textwrap

import pytest

from tunegen.compiler.parse import parse_spec
from tunegen.compiler.spec_check import validate_spec
from tunegen.runtime.errors import SpecError

GOOD = """\
name: my_recipe
method: lora
model: tiny
data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}
lora: {rank: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj]}
training:
  epochs: 1
  batch_size: 2
  lr: 1e-3
"""


@pytest.fixture(autouse=True)
def train_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"instruction": "Say hi.", "output": "hi"}\n')


def errors_for(write_spec, text: str) -> list[str]:
    path = write_spec(textwrap.dedent(text))
    with pytest.raises(SpecError) as info:
        validate_spec(parse_spec(path))
    return str(info.value).splitlines()


def test_good_spec_validates_with_defaults(write_spec):
    spec = validate_spec(parse_spec(write_spec(GOOD)))
    assert spec.training.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; the schema makes it a float
    assert spec.training.scheduler == "cosine"
    assert spec.lora.targets == ["q_proj", "v_proj"]
    assert spec.checkpoint.resume is False


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("  lr: 1e-3", "  lr: 1e-3\n  lrr: 2"),
            "spec.yaml:10: training.lrr: unknown key; did you mean 'lr'?",
        ),
        (
            ("  epochs: 1", "  epochs: one"),
            "spec.yaml:7: training.epochs: expected an integer, got a string ('one')",
        ),
        (
            ("  batch_size: 2", "  batch_size: 0"),
            "spec.yaml:8: training.batch_size: must be at least 1, got 0",
        ),
        (
            ("name: my_recipe", "name: my-recipe"),
            "spec.yaml:1: name: 'my-recipe' is not a plain Python identifier",
        ),
        (
            ("name: my_recipe", "name: ../x"),
            "spec.yaml:1: name: '../x' is not a plain Python identifier",
        ),
        (
            ("method: lora", "method: lorra"),
            "spec.yaml:2: method: 'lorra' is not one of full, lora, dora, qlora, dpo, kd, grpo; did you mean 'lora'?",
        ),
        (
            ("model: tiny", "model: tinyy"),
            "spec.yaml:3: model: 'tinyy' is not a built-in model; did you mean 'tiny'? (built-in: tiny) nor a checkpoint dir",
        ),
        (("train.jsonl", "nope.jsonl"), "spec.yaml:4: data.path: file 'data/nope.jsonl' not found"),
        (
            ("targets: [q_proj, v_proj]", "targets: [q_proj, vproj]"),
            "spec.yaml:5: lora.targets[1]: unknown layer 'vproj'; did you mean 'v_proj'?",
        ),
        (
            ("  epochs: 1", "  epochs: 1\n  rank: 3"),
            "spec.yaml:8: training.rank: unknown key; 'rank' belongs in lora.rank",
        ),
        (
            ("data: {", "data: {colum: text, "),
            "spec.yaml:4: data.colum: unknown key; did you mean 'column'?",
        ),
    ],
)
def test_each_bad_spec_gives_its_one_line_error(write_spec, change, expected):
    old, new = change
    assert old in GOOD
    lines = errors_for(write_spec, GOOD.replace(old, new))
    assert len(lines) == 1, lines
    assert lines[0].endswith(expected) or expected in lines[0], lines[0]


def test_all_problems_are_listed_together(write_spec):
    text = GOOD.replace("  epochs: 1", "  epochs: -1").replace(
        "  lr: 1e-3", "  lr: fast\n  colour: red"
    )
    lines = errors_for(write_spec, text)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "training.colour",
        "training.epochs",
        "training.lr",
    ]


def test_missing_required_keys(write_spec):
    lines = errors_for(write_spec, "name: x\nmethod: full\n")
    assert any("spec.yaml:1: model: missing required key" in line for line in lines)
    assert any("data: missing required key" in line for line in lines)


def test_lora_section_with_full_method_is_refused(write_spec):
    lines = errors_for(write_spec, GOOD.replace("method: lora", "method: full"))
    assert lines == [lines[0]] and "lora: only used with method: lora, dora or qlora" in lines[0]


def test_bad_yaml_reports_line(write_spec):
    lines = errors_for(write_spec, "name: x\nmethod: [full\nmodel: tiny\n")
    assert len(lines) == 1
    assert lines[0].endswith("spec.yaml:3: invalid YAML: expected ',' or ']', but got ':'")


def test_duplicate_key(write_spec):
    lines = errors_for(write_spec, GOOD + "name: again\n")
    assert lines == [f"{lines[0].split(':')[0]}:10: name: duplicate key"]


def test_spec_that_is_not_a_mapping(write_spec):
    assert errors_for(write_spec, "- a\n- b\n")[0].endswith(
        "spec.yaml:1: a spec is a mapping of keys"
    )


PREFERENCE = "data: {path: data/pref.jsonl, format: preference, template: alpaca, max_seq_len: 64}"
NO_LORA = ("lora: {rank: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj]}\n", "")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            [("method: lora", "method: dpo")],
            "data.format: method: dpo needs data.format: preference",
        ),
        (
            [
                (
                    "data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}",
                    PREFERENCE,
                )
            ],
            "data.format: preference data is for method: dpo (this spec has lora)",
        ),
        ([("training:", "dpo: {beta: 0.2}\ntraining:")], "dpo: only used with method: dpo"),
        (
            [("method: lora", "method: kd"), NO_LORA],
            "method: kd needs a kd section with kd.teacher",
        ),
        (
            [
                ("method: lora", "method: kd"),
                NO_LORA,
                ("training:", "kd: {teacher: tiny}\ntraining:"),
            ],
            "kd.teacher: built-in 'tiny' is randomly initialised",
        ),
        (
            [
                ("method: lora", "method: kd"),
                NO_LORA,
                ("training:", "kd: {teacher: nowhere}\ntraining:"),
            ],
            "kd.teacher: 'nowhere' is not a checkpoint dir with a config.json",
        ),
        (
            [("method: lora", "method: dora"), ("dropout: 0.0,", "use_dora: false,")],
            "lora.use_dora: method: dora always uses DoRA",
        ),
        (
            [
                ("method: lora", "method: dpo"),
                (
                    "data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}",
                    PREFERENCE,
                ),
                ("training:", "dpo: {use_lora: false}\ntraining:"),
            ],
            "lora: only used with method: lora, dora or qlora; with method: dpo, set dpo.use_lora: true",
        ),
        (
            [
                ("method: lora", "method: dpo"),
                (
                    "data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}",
                    PREFERENCE,
                ),
                ("training:", "dpo: {loss_type: ipo, label_smoothing: 0.1}\ntraining:"),
            ],
            "dpo.label_smoothing: only used with dpo.loss_type: sigmoid",
        ),
        (
            [
                ("method: lora", "method: dpo"),
                (
                    "data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}",
                    PREFERENCE.replace("}", ", train_on_input: true}"),
                ),
            ],
            "data.train_on_input: only used with data.format: instruct or chat",
        ),
        (
            [("method: lora", "method: full")],
            "lora: only used with method: lora, dora or qlora; this spec has method: full",
        ),
        (
            [("method: lora", "method: qlora"), ("rank: 4", "rank: 0")],
            "lora.rank: must be at least 1",
        ),
    ],
)
def test_method_combinations_that_cannot_work_are_refused(write_spec, tmp_path, changes, expected):
    (tmp_path / "data" / "pref.jsonl").write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    )
    text = GOOD
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    lines = errors_for(write_spec, text)
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("method", "extra", "adapters", "dora"),
    [
        ("dora", "", True, True),
        ("qlora", "", True, False),
        ("lora", "", True, False),
        ("dpo", "", True, False),
        ("dpo", "dpo: {use_lora: false}\n", False, False),
        ("kd", "kd: {teacher: teacher}\n", True, False),  # a lora section makes the student LoRA
        ("kd", "kd: {teacher: teacher, use_lora: true}\n", True, False),
    ],
)
def test_method_combinations_that_work_validate(
    write_spec, tmp_path, method, extra, adapters, dora
):
    from tunegen.compiler.schema import uses_adapters, uses_dora

    (tmp_path / "data" / "pref.jsonl").write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    )
    if method == "kd":
        save_tiny_teacher(tmp_path / "teacher")
    text = GOOD.replace("method: lora", f"method: {method}")
    if method == "dpo":
        text = text.replace(
            "data: {path: data/train.jsonl, format: instruct, template: alpaca, max_seq_len: 64}",
            PREFERENCE,
        )
    if not adapters:
        text = text.replace(
            "lora: {rank: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj]}\n", ""
        )
    spec = validate_spec(parse_spec(write_spec(text + extra)))
    assert (uses_adapters(spec), uses_dora(spec)) == (adapters, dora)


def save_tiny_teacher(folder) -> None:
    """A checkpoint dir the validator accepts as a teacher: config.json is all it reads."""
    import json

    import torch

    from tunegen.runtime.hf_checkpoint import hf_config_for
    from tunegen.runtime.models import tiny

    folder.mkdir()
    with torch.device("meta"):
        (folder / "config.json").write_text(json.dumps(hf_config_for(tiny())))


def test_a_logging_backend_that_is_not_installed_names_its_extra(write_spec, monkeypatch, capsys):
    from tunegen.compiler.cli import main
    from tunegen.runtime import loggers

    monkeypatch.setitem(loggers._NEEDS, "wandb", ("tunegen_no_such_lib", "wandb"))
    path = write_spec(GOOD + "logging: {backends: [jsonl, wandb]}\n")
    monkeypatch.setattr("sys.argv", ["tunegen", "validate", str(path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {path}:10: logging.backends[1]: wandb is not installed: "
        "pip install 'tunegen[wandb]'\n"
    )


def test_logging_backends_become_components_of_the_metric_logger():
    from tunegen.compiler.plan import _logging_items
    from tunegen.compiler.schema import LoggingSpec

    logging = LoggingSpec(backends=["jsonl", "tensorboard", "mlflow", "wandb"], progress="lines")
    logger, every, progress = _logging_items(logging)
    (backends,) = [item for item in logger.items if item.key == "backends"]
    assert [(b.key, b.items[0].value, b.items[1].value) for b in backends.items] == [
        (
            "tensorboard",
            "tunegen.runtime.loggers.TensorBoardLogger",
            "${checkpointer.output_dir}/tensorboard",
        ),
        ("mlflow", "tunegen.runtime.loggers.MLflowLogger", "${checkpointer.output_dir}/mlruns"),
        ("wandb", "tunegen.runtime.loggers.WandbLogger", "${checkpointer.output_dir}/wandb"),
    ]
    assert (every.key, progress.key, progress.value) == ("every_n_steps", "progress", "lines")
    (plain_logger, *_) = _logging_items(LoggingSpec())
    assert [item.key for item in plain_logger.items] == ["_component_", "log_dir"]
