"""The spec schema as the one source of truth: its JSON Schema, the config keys that carry its
rules, and the names users bring from other tools."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import tunegen_status as _call
from omegaconf import OmegaConf

from tunegen.compiler.cli.copy_spec import copy_spec, schema_path
from tunegen.compiler.parse import parse_spec
from tunegen.compiler.schema import (
    CONFIG_KEYS,
    FOREIGN_NAMES,
    SCHEMA_FILE,
    Spec,
    field_at,
    json_schema,
    json_schema_text,
)
from tunegen.compiler.spec_check import validate_spec
from tunegen.runtime.errors import ConfigError, SpecError

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# JSON Schema for editors and tools


def test_shipped_schema_file_is_current() -> None:
    shipped = REPO / "compiler" / SCHEMA_FILE
    assert shipped.read_text(encoding="utf-8") == json_schema_text(), (
        "run: tunegen schema --output compiler/spec.schema.json"
    )


def test_tunegen_schema_prints_and_writes_it(workdir: Path, capsys) -> None:
    capsys.readouterr()
    assert _call(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    assert _call(["schema", "--output", "spec.schema.json"]) == 0
    assert json.loads(Path("spec.schema.json").read_text()) == json_schema()


def test_schema_forbids_unknown_keys_and_documents_every_key() -> None:
    schema = json_schema()
    sections = [schema, *schema["$defs"].values()]
    assert (
        len(sections) == 13
    )  # the spec and its 12 sections (grpo: GrpoSpec, RewardSpec; distributed)
    for section in sections:
        assert section["additionalProperties"] is False
        for name, prop in section["properties"].items():
            assert prop.get("description"), name
    training = schema["$defs"]["TrainingSpec"]["properties"]
    assert training["batch_size"] == {
        "default": 4,
        "description": "samples per micro-batch",
        "minimum": 1,
        "title": "Batch Size",
        "type": "integer",
    }
    assert training["scheduler"]["enum"] == ["cosine", "linear", "constant"]
    assert schema["required"] == ["name", "method", "model", "data"]


def test_cp_points_editors_at_the_schema(workdir: Path) -> None:
    dest = copy_spec(REPO / "specs" / "lora.yaml", workdir / "my.yaml")
    first, second = dest.read_text().splitlines()[:2]
    assert first == f"# yaml-language-server: $schema={schema_path().as_uri()}"
    assert second.startswith("# LoRA")
    assert json.loads(schema_path().read_text()) == json_schema()
    assert validate_spec(parse_spec(dest)).name == "lora"  # still a valid spec


# --------------------------------------------------------------------------------------------------
# Config keys that hold spec values


def _spec_value(spec: Spec, spec_key: str) -> object:
    """A spec key's value, with the defaults of a section the spec leaves out."""
    value: object = spec
    for part in spec_key.split("."):
        if value is None:  # an omitted optional section: its defaults
            _, field = field_at(tuple(spec_key.split("."))[:1])
            value = field.annotation.__args__[0]()
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", ["demo", "full", "lora", "dora", "qlora", "dpo", "kd"])
def test_config_keys_hold_their_spec_values(name: str) -> None:
    """`CONFIG_KEYS` agrees with what the plan writes: each such key of every golden config holds
    (after interpolation) the value of its spec key."""
    spec = Spec.model_validate(parse_spec(REPO / "specs" / f"{name}.yaml").values)
    cfg = OmegaConf.load(REPO / "tests" / "golden" / f"{name}.yaml")
    checked = 0
    for config_key, spec_key in CONFIG_KEYS.items():
        value = OmegaConf.select(cfg, config_key, default="<absent>")
        if value == "<absent>":
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        assert value == _spec_value(spec, spec_key), config_key
        checked += 1
    assert checked >= 20


def test_every_table_entry_names_a_real_spec_key() -> None:
    for spec_key in [*CONFIG_KEYS.values(), *FOREIGN_NAMES.values()]:
        path, field = field_at(tuple(spec_key.split(".")))
        assert field is not None and ".".join(path) == spec_key, spec_key


# --------------------------------------------------------------------------------------------------
# Names from HF Trainer, axolotl and torchtune


GOOD = """\
name: my_recipe
method: lora
model: tiny
data: {path: train.jsonl}
training:
  epochs: 1
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  epochs: 1",
            "  learning_rate: 1e-3",
            "training.learning_rate: unknown key; did you mean 'lr'?",
        ),
        (
            "  epochs: 1",
            "  num_epochs: 2",
            "training.num_epochs: unknown key; did you mean 'epochs'?",
        ),
        (
            "  epochs: 1",
            "  num_train_epochs: 2",
            "training.num_train_epochs: unknown key; did you mean 'epochs'?",
        ),
        (
            "  epochs: 1",
            "  micro_batch_size: 2",
            "training.micro_batch_size: unknown key; did you mean 'batch_size'?",
        ),
        ("  epochs: 1", "  per_device_train_batch_size: 2", "did you mean 'batch_size'?"),
        ("  epochs: 1", "  gradient_accumulation_steps: 2", "did you mean 'grad_accum'?"),
        ("  epochs: 1", "  max_grad_norm: 1.0", "did you mean 'clip_grad_norm'?"),
        (
            "name: my_recipe",
            "name: my_recipe\nlora_r: 8",
            "spec.yaml:2: lora_r: unknown key; did you mean 'lora.rank'?",
        ),
        (
            "name: my_recipe",
            "name: my_recipe\nlearning_rate: 1e-3",
            "learning_rate: unknown key; did you mean 'training.lr'?",
        ),
        (
            "  epochs: 1",
            "  lora_alpha: 16",
            "training.lora_alpha: unknown key; did you mean 'lora.alpha'?",
        ),
        ("model: tiny", "base_model: tiny", "base_model: unknown key; did you mean 'model'?"),
    ],
)
def test_names_from_other_tools_in_specs(write_spec, workdir, old, new, expected) -> None:
    (workdir / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = write_spec(textwrap.dedent(GOOD).replace(old, new))
    with pytest.raises(SpecError) as info:
        validate_spec(parse_spec(path))
    lines = str(info.value).splitlines()
    assert any(line.endswith(expected) for line in lines), lines


# --------------------------------------------------------------------------------------------------
# Constructors keep the checks that protect direct callers, in the spec's words


def test_constructor_checks_use_the_spec_wording() -> None:
    import torch

    from tunegen.compiler.schema import check_value
    from tunegen.runtime.distillation import ForwardKLLoss
    from tunegen.runtime.dpo import DPOLoss
    from tunegen.runtime.profiling import Profiler
    from tunegen.runtime.schedulers import cosine_with_warmup

    cases = [
        (lambda: DPOLoss(beta=0), "dpo.beta", 0, "beta: "),
        (lambda: DPOLoss(loss_type="hinge"), "dpo.loss_type", "hinge", "loss_type: "),
        (lambda: ForwardKLLoss(temperature=0), "kd.temperature", 0, "temperature: "),
        (
            lambda: Profiler(output_dir="p", active_steps=0),
            "profiler.active_steps",
            0,
            "profiler: active_steps: ",
        ),
    ]
    for build, spec_key, value, prefix in cases:
        with pytest.raises(ValueError) as info:
            build()
        assert str(info.value) == prefix + check_value(spec_key, value)[1]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError) as info:
        cosine_with_warmup(optimizer, warmup_steps=-1, total_steps=10)
    assert str(info.value) == (
        "scheduler: warmup_steps: " + check_value("training.warmup_steps", -1)[1]
    )
