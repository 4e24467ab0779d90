"""Tests for `check_config`: every problem found without building anything, all at once."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tunegen.runtime.preflight import (
    Problem,
    check_config,
    format_problems,
    recipe_component_calls,
    recipe_reads,
    recipe_supplied_args,
)

# A user component module with string annotations (`from __future__ import annotations`), so the
# type checks go through `typing.get_type_hints`.
COMPONENTS = """
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional, Union


class Tokenizer:
    pass


class Model:
    def __init__(
        self,
        dim: int,
        dropout: float = 0.0,
        name: str = "m",
        tied: bool = False,
        act: Literal["gelu", "silu"] = "gelu",
        sizes: list[int] = (),
        pair: tuple[int, int] = (1, 1),
        tags: Sequence[str] = (),
        ckpt: Optional[Path] = None,
        scale: Union[int, str] = 1,
        limit: int = None,
        tok: Tokenizer = None,
        layers: list = (),
        *,
        mode: Literal[1, 2] = 1,
    ):
        pass


def build_dataset(tokenizer, source: str, max_len: int = 8):
    return None


def loose(x: int, **kwargs):
    return None


def bad_hints(x: "NotDefinedAnywhere" = 1, y: int = 2):
    return None


def pos_only(a, /, b=1):
    return None
"""


@pytest.fixture
def components(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of user components in the (temporary) working directory; yields its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path])  # resolving a component appends the cwd
    name = f"check_components_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(COMPONENTS)
    yield name
    sys.modules.pop(name, None)


def _unread(key_path: str) -> str:
    """The message for a key no code reads (no key the recipe reads is close to it)."""
    return (
        f"{key_path}: no code in the recipe reads this key; remove it, or read it in the recipe "
        f"(self.cfg.{key_path})"
    )


def _problems(data: dict, **kwargs) -> list[str]:
    return [str(p) for p in check_config(OmegaConf.create(data), **kwargs)]


# --------------------------------------------------------------------------------------------------
# The acceptance case: everything in one call

RECIPE = """
class Recipe:
    def __init__(self, cfg):
        self.cfg = cfg

    def setup(self):
        self.model = instantiate(self.cfg.model)
        self.optimizer = instantiate(self.cfg.optimizer, params=self.model.parameters())
        self.dataset = instantiate(self.cfg.dataset, tokenizer=None)
        self.lr = self.cfg.training.lr
        self.steps = self.cfg["training"]["steps"]
"""


def test_all_problems_reported_in_one_call(components: str, tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "training": {"lr": 1e-3, "steps": 10, "lr_warmpu": 100},
            # A nested component with a wrong argument, inside a list.
            "model": {
                "_component_": "torch.nn.ModuleList",
                "modules": [{"_component_": "torch.nn.Linear", "in_features": 2, "out_featurs": 2}],
            },
            "optimizer": {"_component_": "torch.optim.AdamW", "lrr": "${training.lr}"},
            "dataset": {
                "_component_": f"{components}.build_dataset",
                "source": "data/train.jsonl",
            },
        }
    )
    problems = check_config(cfg, recipe_source=RECIPE)
    assert [str(p) for p in problems] == [
        _unread("training.lr_warmpu"),
        (
            "model.modules[0].out_featurs: unknown argument of torch.nn.Linear; "
            "did you mean 'out_features'?"
        ),
        "model.modules[0]: missing required argument 'out_features' of torch.nn.Linear",
        "optimizer.lrr: unknown argument of torch.optim.AdamW; did you mean 'lr'?",
        "dataset.source: file 'data/train.jsonl' not found",
    ]
    assert problems[0] == Problem(
        "training.lr_warmpu", _unread("training.lr_warmpu").split(": ", 1)[1]
    )

    # Fixing all of them leaves nothing to report.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    del cfg.training.lr_warmpu
    cfg.model.modules[0].out_features = cfg.model.modules[0].pop("out_featurs")
    cfg.optimizer.lr = cfg.optimizer.pop("lrr")
    assert check_config(cfg, recipe_source=RECIPE) == []


def test_format_problems_prefixes_the_config_file() -> None:
    problems = [
        Problem("optimizer.lrr", "unknown argument of torch.optim.AdamW; did you mean 'lr'?"),
        Problem("training.x", "no code in lora.py reads this key"),
    ]
    assert format_problems(problems, source="generated/lora.yaml") == (
        "generated/lora.yaml: optimizer.lrr: unknown argument of torch.optim.AdamW; "
        "did you mean 'lr'?\n"
        "generated/lora.yaml: training.x: no code in lora.py reads this key"
    )
    assert format_problems([], source="x.yaml") == ""


# --------------------------------------------------------------------------------------------------
# Components and their arguments


def test_unresolvable_components_are_each_listed() -> None:
    problems = _problems(
        {
            "optimizer": {"_component_": "torch.optim.AdamWW"},
            "model": {"_component_": "os.system; rm -rf /"},
            "loss": {"_component_": "torch.nn.CrossEntropyLoss", "weight": None},
        }
    )
    assert problems == [
        (
            "optimizer._component_: cannot import 'torch.optim.AdamWW' "
            "(module 'torch.optim' has no attribute 'AdamWW')"
        ),
        "model._component_: 'os.system; rm -rf /' is not a dotted name like 'torch.optim.AdamW'",
    ]


SUPPLYING_RECIPE = """
def setup(self):
    self.optimizer = instantiate(self.cfg.optimizer, params=self.model.parameters())
    sched = self.cfg.lr_scheduler
    self.lr_scheduler = instantiate(sched, optimizer=self.optimizer, total_steps=10)
    self.dataset = instantiate(self.cfg.dataset, tokenizer=self.tokenizer)
    self.loss = instantiate(self.cfg.loss, **self.loss_args)
    self.model = instantiate(self.cfg.model)
"""


def test_supplied_args_come_from_the_recipes_instantiate_calls() -> None:
    assert recipe_supplied_args(SUPPLYING_RECIPE) == {
        "dataset": ("tokenizer",),
        "loss": ("**",),
        "lr_scheduler": ("optimizer", "total_steps"),
        "model": (),
        "optimizer": ("params",),
    }


def test_supplied_args_are_not_missing_but_others_are() -> None:
    data = {
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
        "lr_scheduler": {"_component_": "torch.optim.lr_scheduler.LambdaLR"},
    }
    assert _problems(data, supplied_args=recipe_supplied_args(SUPPLYING_RECIPE)) == [
        "lr_scheduler: missing required argument 'lr_lambda' of torch.optim.lr_scheduler.LambdaLR",
        (
            "lr_scheduler: torch.optim.lr_scheduler.LambdaLR takes no argument 'total_steps', "
            "which the recipe passes at run time"
        ),
    ]
    # A recipe that builds the optimizer without `params` leaves it missing.
    assert "optimizer: missing required argument 'params' of torch.optim.SGD" in _problems(
        data, supplied_args={}
    )


def test_without_a_recipe_only_nested_components_miss_arguments(components: str) -> None:
    """Without a recipe nobody knows what it passes to the components it builds; a component
    inside another one is built by `instantiate` alone, so its missing arguments are certain."""
    dataset = {"_component_": f"{components}.build_dataset", "source": "."}
    assert _problems({"dataset": dataset, "eval": {"dataset": dataset}}) == []
    nested = {"_component_": f"{components}.loose", "x": 1, "inner": dataset}
    assert _problems({"model": nested}) == [
        f"model.inner: missing required argument 'tokenizer' of {components}.build_dataset"
    ]


def test_supplied_args_follow_the_node_path(components: str) -> None:
    dataset = {"_component_": f"{components}.build_dataset", "source": "."}
    source = (
        "def f(self):\n"
        "    instantiate(self.cfg.dataset, tokenizer=t)\n"
        "    instantiate(self.cfg.eval.dataset)\n"
    )
    assert _problems({"dataset": dataset, "eval": {"dataset": dataset}}, recipe_source=source) == [
        f"eval.dataset: missing required argument 'tokenizer' of {components}.build_dataset"
    ]


def test_config_setting_a_supplied_arg_is_reported() -> None:
    data = {"optimizer": {"_component_": "torch.optim.SGD", "params": [], "lr": 0.1}}
    assert _problems(data, supplied_args={"optimizer": ("params",)}) == [
        (
            "optimizer.params: the recipe passes this argument of torch.optim.SGD; "
            "remove it from the config"
        )
    ]


def test_a_hand_edited_recipe_changes_its_own_contract() -> None:
    """A user who passes a new argument in the recipe no longer sets it in the config, and one
    who builds a component without an argument must set it there: no runtime table to edit."""
    data = {"optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "params": []}}
    edited = "def f(self):\n    instantiate(self.cfg.optimizer, momentum=0.9)\n"
    assert _problems(data, recipe_source=edited) == []
    data["optimizer"]["momentum"] = 0.5
    assert _problems(data, recipe_source=edited) == [
        "optimizer.momentum: the recipe passes this argument of torch.optim.SGD; "
        "remove it from the config"
    ]


def test_var_keyword_accepts_any_argument(components: str) -> None:
    assert _problems({"f": {"_component_": f"{components}.loose", "x": 1, "anything": 2}}) == []


def test_positional_only_argument_cannot_be_set(components: str) -> None:
    assert _problems({"f": {"_component_": f"{components}.pos_only", "a": 1}}) == [
        f"f.a: {components}.pos_only takes 'a' only by position, so a config cannot set it",
    ]


def test_nested_component_in_a_sub_node(components: str) -> None:
    data = {
        "model": {
            "_component_": f"{components}.loose",
            "x": 1,
            "inner": {"wrapper": {"_component_": f"{components}.Model", "dimm": 3}},
        }
    }
    assert _problems(data) == [
        f"model.inner.wrapper.dimm: unknown argument of {components}.Model; did you mean 'dim'?",
        f"model.inner.wrapper: missing required argument 'dim' of {components}.Model",
    ]


def test_check_does_not_instantiate(components: str, tmp_path: Path) -> None:
    (tmp_path / "side_effect_mod.py").write_text(
        "import pathlib\n"
        "class Touch:\n"
        "    def __init__(self, x: int):\n"
        "        pathlib.Path('touched').write_text('x')\n"
    )
    try:
        assert _problems({"t": {"_component_": "side_effect_mod.Touch", "x": 1}}) == []
    finally:
        sys.modules.pop("side_effect_mod", None)
    assert not (tmp_path / "touched").exists()


# --------------------------------------------------------------------------------------------------
# Types


def _model(components: str, **args) -> dict:
    return {"model": {"_component_": f"{components}.Model", "dim": 4, **args}}


@pytest.mark.parametrize(
    "args",
    [
        {"dropout": 0},  # int is accepted for float
        {"dropout": 0.1, "name": "x", "tied": True},
        {"act": "silu", "mode": 2},
        {"sizes": [1, 2], "pair": [3, 4], "tags": ["a", "b"]},
        {"ckpt": "weights/model.pt", "scale": "auto"},
        {"ckpt": None, "scale": 3},
        {"limit": None},  # `limit: int = None` is an implicit Optional
        {"tok": {"_component_": "builtins.object"}},  # a nested component's result is unknown
        {"dim": "${size}"},
    ],
)
def test_values_matching_annotations_pass(components: str, args: dict) -> None:
    assert _problems({"size": 8, **_model(components, **args)}) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"dim": "4"}, "model.dim: {m} expects int here, got str '4'"),
        ({"dim": 4.0}, "model.dim: {m} expects int here, got float 4.0"),
        ({"dim": True}, "model.dim: {m} expects int here, got bool True"),
        ({"dropout": "0.1"}, "model.dropout: {m} expects float here, got str '0.1'"),
        ({"tied": "yes"}, "model.tied: {m} expects bool here, got str 'yes'"),
        ({"name": 3}, "model.name: {m} expects str here, got int 3"),
        (
            {"act": "relu"},
            "model.act: {m} expects Literal['gelu', 'silu'] here, got str 'relu'",
        ),
        ({"mode": "1"}, "model.mode: {m} expects Literal[1, 2] here, got str '1'"),
        ({"sizes": [1, "x"]}, "model.sizes: {m} expects list[int] here, got list [1, 'x']"),
        ({"sizes": 3}, "model.sizes: {m} expects list[int] here, got int 3"),
        ({"pair": [1, 2, 3]}, "model.pair: {m} expects tuple[int, int] here, got list [1, 2, 3]"),
        ({"ckpt": 5}, "model.ckpt: {m} expects Path | None here, got int 5"),
        ({"scale": 1.5}, "model.scale: {m} expects int | str here, got float 1.5"),
        ({"tok": "spm"}, "model.tok: {m} expects Tokenizer here, got str 'spm'"),
    ],
)
def test_type_mismatches_are_reported(components: str, args: dict, expected: str) -> None:
    assert _problems(_model(components, **args)) == [expected.format(m=f"{components}.Model")]


def test_torch_annotations_are_checked() -> None:
    data = {"optimizer": {"_component_": "torch.optim.AdamW", "eps": "tiny", "betas": [0.9, 0.95]}}
    assert _problems(data) == [
        "optimizer.eps: torch.optim.AdamW expects float here, got str 'tiny'"
    ]


def test_unevaluable_string_annotation_skips_only_that_check(components: str) -> None:
    data = {"f": {"_component_": f"{components}.bad_hints", "x": "anything", "y": "2"}}
    assert _problems(data) == []  # get_type_hints fails for the whole function: nothing checked
    # ...but the arguments themselves are still checked.
    data["f"]["z"] = 1
    assert _problems(data) == [f"f.z: unknown argument of {components}.bad_hints"]


# --------------------------------------------------------------------------------------------------
# Keys no code reads


def test_recipe_reads_collects_maximal_chains() -> None:
    source = """
def f(cfg, self):
    use(self.cfg.training.lr)
    use(cfg.optimizer)
    use(self.cfg["data"]["path"])
    use(self.cfg.model.layers[0].dim)
    use(cfg.training.get("warmup", 3))
    for k, v in self.cfg.logging.items():
        pass
    use(cfg)
    use(other.cfg.ignored)
    use(self.cfg.output_dir.rstrip("/"))
    steps = cfg.schedule.steps  # an alias: reads the key, but only uses read below it
    use(steps)
    opt = cfg.opt  # an alias of a section, used only through its keys
    use(opt.lr)
"""
    assert recipe_reads(source) == {
        ("data", "path"): True,
        ("logging",): True,
        ("model", "layers"): True,
        ("opt",): False,
        ("opt", "lr"): True,
        ("optimizer",): True,
        ("output_dir", "rstrip"): True,
        ("schedule", "steps"): True,
        ("training", "lr"): True,
        ("training", "warmup"): True,
    }


def test_unread_keys_with_self_cfg_chains() -> None:
    source = """
class R:
    def setup(self):
        lr = self.cfg.training.lr
        model = instantiate(self.cfg.model)
        out = self.cfg.output_dir.rstrip("/")
        tags = self.cfg.run.tags[0]
"""
    data = {
        "output_dir": "out",
        "training": {"lr": 0.1, "lr_warmup": 5, "extra": {"a": 1, "b": 2}},
        "model": {"_component_": "torch.nn.Identity", "unused_arg": 1},
        "run": {"tags": ["x", "y"], "name": "n"},
        "eval": {"every": 5, "batches": 2},
    }
    assert _problems(data, recipe_source=source) == [
        _unread("training.lr_warmup"),
        _unread("training.extra"),
        _unread("run.name"),
        _unread("eval"),
    ]


def test_recipe_reading_a_key_the_config_lacks_is_reported() -> None:
    source = "def f(cfg):\n    return cfg.training.lr, cfg.training.gamma, cfg.seed\n"
    data = {"training": {"lr": 0.1}}
    assert _problems(data, recipe_source=source) == [
        "training.gamma: the recipe reads this key but the config does not set it",
        "seed: the recipe reads this key but the config does not set it",
    ]


def test_without_recipe_source_nothing_is_unread() -> None:
    assert _problems({"training": {"lr": 0.1}}) == []


def test_unparsable_recipe_source_is_a_problem_not_a_crash() -> None:
    assert _problems({"a": 1}, recipe_source="def f(:\n") == [
        "cannot parse the recipe source (line 1: invalid syntax)"
    ]


# --------------------------------------------------------------------------------------------------
# Files


def test_files_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "present.txt").write_text("x")
    (tmp_path / "ckpt").mkdir()
    data = {
        "dataset": {"source": "data/x.jsonl", "path": "present.txt", "url_path": "https://x/y"},
        "tokenizer": {"model_file": "tok.model", "vocab_file": "ckpt", "merges_file": None},
        "checkpoint": {"checkpoint_dir": "ckpt", "adapter_dir": "present.txt", "weights_path": ""},
        "eval": {"files_path": ["present.txt", "gone.txt"]},
        "output_dir": "runs/new",
        "log_dir": "runs/logs",
        "metrics": {"tensorboard_log_dir": "runs/tb"},
        "other": {"file": "not-checked", "dir": "not-checked"},
    }
    assert _problems(data) == [
        "dataset.source: file 'data/x.jsonl' not found",
        "tokenizer.model_file: file 'tok.model' not found",
        "tokenizer.vocab_file: 'ckpt' is a directory, not a file",
        "checkpoint.adapter_dir: 'present.txt' is a file, not a directory",
        "eval.files_path[1]: file 'gone.txt' not found",
    ]


def test_file_paths_resolve_interpolations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = {"root": "data", "dataset": {"source": "${root}/train.jsonl"}}
    assert _problems(data) == ["dataset.source: file 'data/train.jsonl' not found"]


# --------------------------------------------------------------------------------------------------
# Missing values and interpolations


def test_missing_values_and_broken_interpolations() -> None:
    data = {
        "training": {"lr": "???", "min_lr": "${training.lrr}", "label": "run-${nope}"},
        "layers": [1, "???"],
        "env": "${oc.env:TUNEGEN_SURELY_UNSET_VAR}",
        "ok": "${training.label}",
    }
    problems = _problems(data)
    assert problems[0] == (
        "training.lr: missing value ('???'); set it in the config or with 'training.lr=...'"
    )
    assert problems[1] == (
        "training.min_lr: cannot resolve '${training.lrr}' "
        "(Interpolation key 'training.lrr' not found)"
    )
    assert problems[2].startswith("training.label: cannot resolve 'run-${nope}'")
    assert problems[3] == (
        "layers[1]: missing value ('???'); set it in the config or with 'layers.1=...'"
    )
    assert problems[4].startswith("env: cannot resolve '${oc.env:TUNEGEN_SURELY_UNSET_VAR}'")
    assert problems[5].startswith("ok: cannot resolve '${training.label}'")
    assert len(problems) == 6
    assert all("\n" not in p for p in problems)


def test_missing_component_argument_value_is_reported_once() -> None:
    data = {"optimizer": {"_component_": "torch.optim.SGD", "lr": "???"}}
    assert _problems(data) == [
        "optimizer.lr: missing value ('???'); set it in the config or with 'optimizer.lr=...'"
    ]


def test_problem_str() -> None:
    assert str(Problem("a.b", "bad")) == "a.b: bad"
    assert str(Problem("", "bad")) == "bad"


def test_keys_used_through_interpolations_are_read() -> None:
    source = "def f(cfg):\n    return cfg.optimizer, cfg.model, cfg.eval.nested.x\n"
    data = {
        "base": {"dim": 8, "unused": 1},
        "training": {"lr": 0.1, "warmup": 3},
        "shared": {"a": 1},
        "optimizer": {"_component_": "torch.nn.Identity", "lr": "${training.lr}"},
        "model": {"_component_": "torch.nn.Identity", "dim": "${base.dim}", "sub": "${shared}"},
        # `nested.x` reads `eval.steps`, which reads `eval.every`; `eval.other` is left over.
        "eval": {"steps": "${.every}", "every": 5, "other": 1, "nested": {"x": "${..steps}"}},
    }
    assert _problems(data, recipe_source=source) == [
        _unread("base.unused"),
        _unread("training.warmup"),
        _unread("eval.other"),
    ]


def test_check_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from tunegen.runtime.preflight import check_config\n"
        "cfg = OmegaConf.create({'f': {'_component_': 'json.dumps', 'obj': 1}, 'path': '.'})\n"
        "assert check_config(cfg, recipe_source='cfg.f, cfg.path') == []\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aliases_of_config_nodes_are_followed() -> None:
    source = """
class R:
    def __init__(self, cfg):
        self.cfg = cfg

    def train(self):
        training = self.cfg.training
        opt = training.optim
        for _ in range(training.max_steps):
            pass
        build(opt)

    def evaluate(self):
        training = self.cfg.training  # the same alias in another method is fine
        return training.eval_every

    def other(self, data):
        data = self.cfg.data  # `data` is also a parameter: not an alias, reads all of data
        return data.path
"""
    assert recipe_reads(source) == {
        ("data",): True,
        ("training",): False,
        ("training", "eval_every"): True,
        ("training", "max_steps"): True,
        ("training", "optim"): True,
    }
    cfg = {
        "training": {"max_stepz": 3, "eval_every": 1, "optim": {"lr": 1}},
        "data": {"path": ".", "x": 1},
    }
    assert _problems(cfg, recipe_source=source) == [
        "training.max_stepz: no code in the recipe reads this key; did you mean "
        "'training.max_steps'?",
        "training.max_steps: the recipe reads this key but the config does not set it",
    ]


# --------------------------------------------------------------------------------------------------
# All problems at once: a misspelt key and the interpolations that miss it


def test_a_misspelt_key_is_reported_with_the_interpolation_that_misses_it() -> None:
    source = "def f(self):\n    return self.cfg.dataloader.batch_size, self.cfg.training.lr\n"
    data = {
        "dataloader": {"batch_size": "${training.batch_size}"},
        "training": {"lr": 0.1, "batch_sizex": 4},
    }
    assert _problems(data, recipe_source=source, recipe_name="lora.py") == [
        "dataloader.batch_size: cannot resolve '${training.batch_size}' "
        "(Interpolation key 'training.batch_size' not found)",
        "training.batch_sizex: no code in lora.py reads this key; "
        "did you mean 'training.batch_size'?",
    ]


def test_names_from_other_tools_in_configs() -> None:
    source = "def f(self):\n    return self.cfg.training.lr, self.cfg.training.grad_accum\n"
    data = {
        "training": {
            "lr": 0.1,
            "grad_accum": 1,
            "learning_rate": 0.2,
            "gradient_accumulation_steps": 2,
        }
    }
    assert _problems(data, recipe_source=source) == [
        "training.learning_rate: no code in the recipe reads this key; did you mean 'training.lr'?",
        "training.gradient_accumulation_steps: no code in the recipe reads this key; "
        "did you mean 'training.grad_accum'?",
    ]


def test_spec_rules_apply_to_config_keys_at_the_key_holding_the_value() -> None:
    data = {
        "dataloader": {"batch_size": "${training.batch_size}", "shuffle": "yes"},
        "training": {"batch_size": 0, "lr": "${training.peak}", "peak": -1.0},
        "environment": {"device": "gpu", "dtype": "fp16", "seed": 0},
    }
    # Each once, where the value is written (reached first through dataloader.batch_size).
    assert _problems(data) == [
        "training.batch_size: must be at least 1, got 0",
        "dataloader.shuffle: expected true or false, got a string ('yes')",
        "training.peak: must be greater than 0, got -1.0",
        "environment.device: 'gpu' is not auto, cpu, cuda, cuda:N or mps",
        "environment.dtype: 'fp16' is not one of fp32, bf16, auto; did you mean 'bf16'?",
    ]


# --------------------------------------------------------------------------------------------------
# Calls of the components the recipe builds

CALLED = """
import torch


class LogitsLoss(torch.nn.Module):
    def forward(self, logits, labels):
        return logits


class Scorer:
    def __call__(self, completions, *, answers):
        return completions


class Plain:
    pass
"""

CALLING_RECIPE = """
class Recipe:
    def setup(self):
        self.loss_fn = instantiate(self.cfg.loss)
        self.scorer = instantiate(self.cfg.scorer)
        self.model = instantiate(self.cfg.model)
        self.model = compile(self.model)

    def train(self):
        loss = self.loss_fn(hidden, self.model.output_weight, labels)
        again = self.loss_fn(logits, labels=labels)
        scores = self.scorer(completions, answers=answers)
        unknown = self.scorer(*pieces)
        self.model(1, 2, 3, 4)
"""


@pytest.fixture
def called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path])
    name = f"called_components_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(CALLED)
    yield name
    sys.modules.pop(name, None)


def test_recipe_component_calls_follow_the_attribute_it_is_stored_in() -> None:
    calls = recipe_component_calls(CALLING_RECIPE)
    assert sorted(calls) == ["loss", "scorer"]  # self.model is rebound: not only the component
    first, second = calls["loss"]
    assert (first.line, first.positional, first.keywords, first.open) == (10, 3, (), False)
    assert first.text == "self.loss_fn(hidden, self.model.output_weight, labels)"
    assert (second.positional, second.keywords) == (1, ("labels",))
    assert [call.open for call in calls["scorer"]] == [False, True]


def test_a_call_the_component_cannot_take_is_reported(called: str) -> None:
    data = {
        "loss": {"_component_": f"{called}.LogitsLoss"},
        "scorer": {"_component_": f"{called}.Scorer"},
        "model": {"_component_": f"{called}.Plain"},
    }
    problems = check_config(
        OmegaConf.create(data), recipe_source=CALLING_RECIPE, recipe_name="r.py"
    )
    assert [str(p) for p in problems] == [
        "loss._component_: line 10 of r.py calls it as self.loss_fn(hidden, "
        "self.model.output_weight, labels), which LogitsLoss.forward(logits, labels) cannot "
        "take (too many positional arguments); this recipe computes the loss from the final "
        "hidden states: for a loss on logits, set training.chunked_loss: false in the spec and "
        "regenerate (tunegen new)"
    ]


def test_calls_that_bind_pass_and_a_keyword_is_checked(called: str) -> None:
    recipe = CALLING_RECIPE.replace("hidden, self.model.output_weight, labels", "logits, labels")
    data = {
        "loss": {"_component_": f"{called}.LogitsLoss"},
        "scorer": {"_component_": f"{called}.Scorer"},
        "model": {"_component_": f"{called}.Plain"},
    }
    assert _problems(data, recipe_source=recipe) == []
    wrong = recipe.replace("answers=answers", "answer=answers")
    assert _problems(data, recipe_source=wrong) == [
        "scorer._component_: line 12 of the recipe calls it as self.scorer(completions, "
        "answer=answers), which Scorer.__call__(completions, *, answers) cannot take (missing a "
        "required argument: 'answers')"
    ]
