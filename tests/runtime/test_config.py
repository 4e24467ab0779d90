"""Tests for loading configs, overrides, recipe arguments, and building components."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tunegen.runtime.config import (
    apply_overrides,
    instantiate,
    load_config,
    parse_recipe_args,
    resolve_component,
)
from tunegen.runtime.errors import ConfigError, TunegenError


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module into a temporary working directory; return its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path])  # resolving a component appends the cwd
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_components_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _cfg(data: dict):
    return OmegaConf.create(data)


# --------------------------------------------------------------------------------------------------
# load_config


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1e-3\n  steps: 10\n")
    cfg = load_config(path)
    assert cfg.training.lr == pytest.approx(1e-3)
    assert cfg.training.steps == 10


def test_load_config_resolves_paths_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "generated").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "generated/x.yaml").write_text(
        "model: {_component_: m, path_or_name: ../ckpt}\n"
        "builtin: {path_or_name: tiny}\n"
        "named_like_builtin: {path_or_name: ../tiny}\n"
        "tokenizer: {path: ../tok, name: tiny}\n"
        "dataset: {source: [a.jsonl, ../b.jsonl]}\n"
        "checkpointer: {output_dir: ../runs/x}\n"
        "export: {output_dir: '${checkpointer.output_dir}/hf', source_dir: /abs, "
        "base_model: ../ckpt, base: ../ckpt}\n"
        "other: {hub: {base_model: org/model}, home_dir: ~/x, url_path: 'https://h/x', p: '???'}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("generated/x.yaml")
    assert OmegaConf.to_container(cfg, resolve=True) == {
        "model": {"_component_": "m", "path_or_name": "./ckpt"},
        "builtin": {"path_or_name": "tiny"},  # a built-in model's name, not a path
        "named_like_builtin": {"path_or_name": "./tiny"},  # a dir, not the built-in model
        "tokenizer": {"path": "tok", "name": "tiny"},
        "dataset": {"source": ["generated/a.jsonl", "b.jsonl"]},
        "checkpointer": {"output_dir": "runs/x"},
        "export": {
            "output_dir": "runs/x/hf",  # the interpolation follows the resolved value
            "source_dir": "/abs",
            "base_model": "ckpt",  # an existing dir; a hub name stays as written
            "base": "../ckpt",  # not a path key
        },
        "other": {
            "hub": {"base_model": "org/model"},
            "home_dir": "~/x",
            "url_path": "https://h/x",
            "p": "???",
        },
    }
    # From another directory the same config names the same files; overrides stay the shell's.
    monkeypatch.chdir(tmp_path / "generated")
    cfg = apply_overrides(load_config("x.yaml"), ["dataset.source=[c.jsonl]"])
    assert cfg.model.path_or_name == "../ckpt" and cfg.checkpointer.output_dir == "../runs/x"
    assert list(cfg.dataset.source) == ["c.jsonl"]


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_bad_yaml_has_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n d: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4:")
    assert "bad YAML" in message
    assert "\n" not in message


def test_load_config_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:2:1: bad YAML: found duplicate key"):
        load_config(path)


def test_load_config_rejects_top_level_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_config_error_is_a_tunegen_error() -> None:
    assert issubclass(ConfigError, TunegenError)


# --------------------------------------------------------------------------------------------------
# apply_overrides

BASE = {
    "training": {"lr": 0.1, "steps": 10, "compile": False},
    "run": {"note": "x", "tags": ["a"]},
    "data": {"path": "???"},
    "layers": [{"dim": 4}, {"dim": 8}],
}


def test_override_parses_values_like_yaml() -> None:
    cfg = apply_overrides(
        _cfg(BASE),
        ["training.lr=1e-3", "training.steps=20", "training.compile=true", "run.tags=[1,2]"],
    )
    assert cfg.training.lr == pytest.approx(1e-3)
    assert isinstance(cfg.training.lr, float)
    assert cfg.training.steps == 20
    assert cfg.training.compile is True
    assert list(cfg.run.tags) == [1, 2]


def test_override_null_and_string_values() -> None:
    cfg = apply_overrides(_cfg(BASE), ["run.note=null", "training.steps='5'"])
    assert cfg.run.note is None
    assert cfg.training.steps == "5"


def test_override_splits_on_first_equals() -> None:
    cfg = apply_overrides(_cfg(BASE), ["run.note=a=b"])
    assert cfg.run.note == "a=b"


def test_override_returns_a_new_config() -> None:
    base = _cfg(BASE)
    cfg = apply_overrides(base, ["training.lr=0.5"])
    assert cfg.training.lr == 0.5
    assert base.training.lr == 0.1


def test_override_sets_a_missing_value_and_list_items() -> None:
    cfg = apply_overrides(_cfg(BASE), ["data.path=d.jsonl", "layers.1.dim=16"])
    assert cfg.data.path == "d.jsonl"
    assert cfg.layers[1].dim == 16


def test_override_keeps_interpolations() -> None:
    cfg = apply_overrides(_cfg(BASE), ["run.note=${training.steps}"])
    assert cfg.run.note == 10


def test_override_deletes_with_tilde() -> None:
    cfg = apply_overrides(_cfg(BASE), ["~training.compile", "~run"])
    assert "compile" not in cfg.training
    assert "run" not in cfg


def test_override_adds_with_plus_including_new_sections() -> None:
    cfg = apply_overrides(_cfg(BASE), ["+training.warmup=5", "+logging.wandb.project=p"])
    assert cfg.training.warmup == 5
    assert cfg.logging.wandb.project == "p"


def test_override_plus_on_an_existing_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'training\.lr' already exists; drop the '\+'"):
        apply_overrides(_cfg(BASE), ["+training.lr=1"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "trainng.lr=1",
            "override 'trainng.lr=1': no key 'trainng' in the config; did you mean 'training'?",
        ),
        (
            "training.lrr=1",
            (
                "override 'training.lrr=1': no key 'training.lrr' in the config; "
                "did you mean 'training.lr'?"
            ),
        ),
        (
            "~training.stepz",
            (
                "override '~training.stepz': no key 'training.stepz' in the config; "
                "did you mean 'training.steps'?"
            ),
        ),
    ],
)
def test_override_typo_is_an_error_with_did_you_mean(override: str, expected: str) -> None:
    base = _cfg(BASE)
    with pytest.raises(ConfigError) as info:
        apply_overrides(base, [override])
    assert str(info.value) == expected


def test_override_unknown_key_without_close_match_suggests_plus() -> None:
    with pytest.raises(ConfigError, match=r"no key 'zebra' in the config; to add a new key write"):
        apply_overrides(_cfg(BASE), ["zebra=1"])


@pytest.mark.parametrize(
    "override",
    ["foo", "=3", "~", "+=1", "a b=1", "training..lr=1", "training.lr=[1,", "~training.lr=1"],
)
def test_override_bad_syntax_names_the_override(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(_cfg(BASE), [override])
    assert str(info.value).startswith(f"override {override!r}: ")
    assert "\n" not in str(info.value)


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'training\.lr' is a value, not a section"):
        apply_overrides(_cfg(BASE), ["training.lr.x=1"])


def test_override_list_index_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"no item 'layers\.5'"):
        apply_overrides(_cfg(BASE), ["layers.5.dim=1"])


# --------------------------------------------------------------------------------------------------
# parse_recipe_args


def test_parse_recipe_args_space_and_equals_forms() -> None:
    assert parse_recipe_args(["--config", "c.yaml", "a=1", "~b"]) == (Path("c.yaml"), ["a=1", "~b"])
    assert parse_recipe_args(["a=1", "--config=c.yaml", "+b=2"]) == (
        Path("c.yaml"),
        ["a=1", "+b=2"],
    )


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "missing --config"),
        (["a=1"], "missing --config"),
        (["--config"], "--config needs a file name"),
        (["--config="], "--config needs a file name"),
        (["--config", "a.yaml", "--config", "b.yaml"], "given twice"),
        (["--cfg", "a.yaml"], "unknown option '--cfg'"),
    ],
)
def test_parse_recipe_args_errors(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_recipe_args(argv)


# --------------------------------------------------------------------------------------------------
# resolve_component


def test_resolve_component_imports_class_and_nested_attribute() -> None:
    assert resolve_component("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve_component("torch.optim.lr_scheduler.LambdaLR") is (
        torch.optim.lr_scheduler.LambdaLR
    )
    assert resolve_component("collections.OrderedDict.fromkeys") is not None


def test_resolve_component_missing_attribute_names_key_and_module() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_component("torch.optim.AdamWW", key_path="optimizer")
    assert str(info.value) == (
        "optimizer._component_: cannot import 'torch.optim.AdamWW' "
        "(module 'torch.optim' has no attribute 'AdamWW')"
    )


def test_resolve_component_accepts_the_component_key_as_key_path() -> None:
    with pytest.raises(ConfigError, match=r"^optimizer\._component_: cannot import"):
        resolve_component("torch.optim.AdamWW", key_path="optimizer._component_")


def test_resolve_component_missing_module() -> None:
    with pytest.raises(ConfigError, match=r"model\._component_: .*no module named 'no_such_pkg_x'"):
        resolve_component("no_such_pkg_x.Model", key_path="model")


@pytest.mark.parametrize(
    "dotted", ["os.system; rm -rf /", "torch.optim.AdamW()", "a..b", "", " torch.nn", "1abc.x"]
)
def test_resolve_component_rejects_non_identifiers(dotted: str) -> None:
    with pytest.raises(ConfigError, match="is not a dotted name"):
        resolve_component(dotted, key_path="x")


def test_resolve_component_rejects_non_strings_and_modules() -> None:
    with pytest.raises(ConfigError, match="expected a dotted name"):
        resolve_component(3, key_path="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'torch\.optim' is a module"):
        resolve_component("torch.optim", key_path="x")


def test_resolve_component_from_working_directory(user_module: Callable[[str], str]) -> None:
    name = user_module(
        "class MyLoss:\n    def __init__(self, weight: float = 1.0):\n        pass\n"
    )
    assert resolve_component(f"{name}.MyLoss").__name__ == "MyLoss"


def test_resolve_component_reports_errors_inside_user_module(
    user_module: Callable[[str], str],
) -> None:
    name = user_module("import definitely_not_installed_pkg\n")
    with pytest.raises(ConfigError) as info:
        resolve_component(f"{name}.X", key_path="loss")
    message = str(info.value)
    assert message.startswith(f"loss._component_: cannot import '{name}.X' (importing '{name}'")
    assert "definitely_not_installed_pkg" in message


# --------------------------------------------------------------------------------------------------
# instantiate


def _recorder_module(user_module: Callable[[str], str]) -> str:
    return user_module(
        "class Rec:\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        self.args = args\n"
        "        self.kwargs = kwargs\n"
        "\n"
        "def pair(a: int, b: int = 2):\n"
        "    return (a, b)\n"
    )


def test_instantiate_builds_torch_component() -> None:
    cfg = _cfg({"model": {"_component_": "torch.nn.Linear", "in_features": 3, "out_features": 2}})
    layer = instantiate(cfg.model)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.weight.shape == (2, 3)


def test_instantiate_recurses_into_nodes_and_lists(user_module: Callable[[str], str]) -> None:
    mod = _recorder_module(user_module)
    cfg = _cfg(
        {
            "size": 5,
            "top": {
                "_component_": f"{mod}.Rec",
                "child": {"_component_": f"{mod}.pair", "a": "${size}"},
                "items": [{"_component_": f"{mod}.pair", "a": 1, "b": 3}, 7],
                "plain": {"x": [1, {"y": 2}]},
            },
        }
    )
    top = instantiate(cfg.top)
    assert top.kwargs["child"] == (5, 2)
    assert top.kwargs["items"] == [(1, 3), 7]
    assert top.kwargs["plain"] == {"x": [1, {"y": 2}]}
    assert type(top.kwargs["plain"]) is dict
    assert type(top.kwargs["plain"]["x"]) is list


def test_instantiate_kwargs_override_config_and_args_come_first(
    user_module: Callable[[str], str],
) -> None:
    mod = _recorder_module(user_module)
    cfg = _cfg({"top": {"_component_": f"{mod}.Rec", "a": 1, "b": 2}})
    top = instantiate(cfg.top, "pos", b=20, c=30)
    assert top.args == ("pos",)
    assert top.kwargs == {"a": 1, "b": 20, "c": 30}


def test_instantiate_accepts_plain_mapping() -> None:
    layer = instantiate({"_component_": "torch.nn.Linear", "in_features": 2, "out_features": 2})
    assert isinstance(layer, torch.nn.Linear)


def test_instantiate_optimizer_with_supplied_params() -> None:
    cfg = _cfg({"optimizer": {"_component_": "torch.optim.SGD", "lr": 0.5}})
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer, params=params)
    assert opt.param_groups[0]["lr"] == 0.5


def test_instantiate_unknown_argument_names_nested_key_path() -> None:
    linear = {"_component_": "torch.nn.Linear", "in_features": 2, "out_feature": 3}
    cfg = _cfg({"model": {"_component_": "torch.nn.ModuleList", "modules": [linear]}})
    with pytest.raises(ConfigError) as info:
        instantiate(cfg.model)
    assert str(info.value) == (
        "model.modules[0].out_feature: unknown argument of torch.nn.Linear; "
        "did you mean 'out_features'?"
    )


def test_instantiate_value_error_in_call_becomes_config_error() -> None:
    cfg = _cfg({"optimizer": {"_component_": "torch.optim.SGD", "lr": -1.0}})
    with pytest.raises(ConfigError, match=r"^optimizer: torch\.optim\.SGD\(\.\.\.\) failed: "):
        instantiate(cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(1))])


def test_instantiate_missing_argument_and_missing_value() -> None:
    cfg = _cfg({"model": {"_component_": "torch.nn.Linear", "in_features": 2}})
    # The pre-flight's wording: one binder checks both.
    with pytest.raises(ConfigError) as info:
        instantiate(cfg.model)
    assert str(info.value) == "model: missing required argument 'out_features' of torch.nn.Linear"
    cfg = _cfg({"model": {"_component_": "torch.nn.Linear", "in_features": "???"}})
    with pytest.raises(ConfigError, match=r"^model\.in_features: Missing mandatory value"):
        instantiate(cfg.model)


def test_instantiate_without_component_key() -> None:
    cfg = _cfg({"training": {"lr": 1}})
    with pytest.raises(ConfigError, match=r"^training: no '_component_' key"):
        instantiate(cfg.training)


def test_override_works_on_struct_configs() -> None:
    base = _cfg(BASE)
    OmegaConf.set_struct(base, True)
    cfg = apply_overrides(base, ["+training.warmup=5", "training.lr=0.5", "~run"])
    assert cfg.training.warmup == 5
    assert cfg.training.lr == 0.5
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(ConfigError, match=r"did you mean 'training\.steps'"):
        apply_overrides(base, ["training.stepss=1"])


def test_instantiate_plain_mapping_errors_use_bare_key_names() -> None:
    with pytest.raises(ConfigError) as info:
        instantiate({"_component_": "torch.nn.Linear", "in_features": 2, "out_featurs": 2})
    assert str(info.value) == (
        "out_featurs: unknown argument of torch.nn.Linear; did you mean 'out_features'?"
    )


def test_user_component_imports_siblings_at_call_time(user_module: Callable[[str], str]) -> None:
    helper = user_module("VALUE = 42\n")
    name = user_module(f"def get():\n    import {helper}\n    return {helper}.VALUE\n")
    assert instantiate({"_component_": f"{name}.get"}) == 42


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("training.learning_rate=1e-4", "training.lr"),
        ("training.num_train_epochs=2", "training.epochs"),
        ("training.num_epochs=2", "training.epochs"),
        ("training.micro_batch_size=2", "training.batch_size"),
        ("training.per_device_train_batch_size=2", "training.batch_size"),
        ("training.gradient_accumulation_steps=2", "training.grad_accum"),
        ("training.max_grad_norm=0.5", "training.clip_grad_norm"),
        ("lora_r=4", "lora.rank"),
        ("lora.lora_alpha=4", "lora.alpha"),
        ("training.seed=1", "environment.seed"),  # the spec's name of a config key
        ("training.dtype=bf16", "environment.dtype"),
    ],
)
def test_overrides_know_names_from_other_tools(override: str, suggestion: str) -> None:
    cfg = _cfg(
        {
            "lora": {"rank": 8, "alpha": 16.0},
            "dataloader": {"batch_size": "${training.batch_size}", "shuffle": True},
            "training": {
                "epochs": 1,
                "batch_size": 4,
                "grad_accum": 1,
                "lr": 1e-3,
                "clip_grad_norm": 1.0,
            },
            "environment": {"seed": 0, "dtype": "fp32"},
        }
    )
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, [override])
    assert str(info.value) == (
        f"override {override!r}: no key {key!r} in the config; did you mean {suggestion!r}?"
    )
