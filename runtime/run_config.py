"""What a run is: how long it trains, the config it ran with, and the command that continues it.

* `RunLength` turns `training.epochs`, `training.max_steps` and the data size into the number of
  optimizer steps, and says so in one line at the start of every run.
* A checkpoint records the run's effective config (`config.yaml` in the step dir, written by
  `Checkpointer.save`); on resume `config_changes` lists what differs, one key per line, and
  `check_resume_changes` refuses the changes that would make the resumed run differ from an
  uninterrupted one (data, batching, model, method, seed), naming the key to set back.
* `record_invocation` (called by `launch.load_recipe_config`) remembers how the recipe was
  started, so `resume_command()` can print the exact command that continues it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

__all__ = [
    "ConfigChange",
    "Invocation",
    "RunLength",
    "check_resume_changes",
    "config_changes",
    "config_source",
    "effective_config",
    "record_invocation",
    "resume_command",
]

# Keys whose change makes a resumed run differ from an uninterrupted one: the data and its
# order, how it is batched, the model and what is trained. Prefixes of dotted key paths.
STRICT_KEYS = (
    "model",
    "teacher_model",
    "tokenizer",
    "lora",
    "dataset",
    "dataloader",
    "loss",
    "kd_loss",
    "training.batch_size",
    "training.grad_accum",
    "training.tokens_per_batch",
    "environment.seed",
    "environment.dtype",
)
# What an allowed change does to the resumed run, where that is not obvious.
_NOTES = {
    "training.max_steps": "the lr schedule spans the new length, continuing from the saved step",
    "training.lr": "the new peak lr, on the same schedule",
}
# Keys that differ on every resume by design.
_IGNORED_KEYS = ("training.resume",)


# -- run length --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLength:
    """How many optimizer steps a run takes: `max_steps` when set (epochs then follow from it,
    continuing past `epochs` if need be, as in HF Trainer and axolotl), else `epochs` full passes.
    """

    total_steps: int
    steps_per_epoch: int
    batch_size: int
    grad_accum: int
    #: What one item of a batch is: "samples", "packed rows of 512 tokens", or (token-budget
    #: batches, where a DataLoader item is a whole batch) "batches of up to 4096 tokens".
    unit: str = "samples"

    @classmethod
    def from_config(
        cls,
        *,
        epochs: int,
        max_steps: int | None,
        steps_per_epoch: int,
        batch_size: int,
        grad_accum: int,
        unit: str = "samples",
    ) -> RunLength:
        total = epochs * steps_per_epoch if max_steps is None else max_steps
        return cls(total, steps_per_epoch, batch_size, grad_accum, unit)

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def summary(self) -> str:
        """`training 30 steps (1.2 epochs of 25 steps, batch 4 x accumulation 1 = 4 samples per
        step)`."""
        epochs = f"{self.epochs:.3g}"
        unit = "epoch" if epochs == "1" else "epochs"
        items = self.batch_size * self.grad_accum
        return (
            f"training {self.total_steps} steps ({epochs} {unit} of {self.steps_per_epoch} steps,"
            f" batch {self.batch_size} x accumulation {self.grad_accum} = {items} {self.unit} per"
            " step)"
        )


# -- the config a checkpoint was made with ------------------------------------------------------


@dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between a checkpoint's config and the current one."""

    key: str
    old: Any
    new: Any

    @property
    def strict(self) -> bool:
        """Whether the change breaks exact resume (see STRICT_KEYS)."""
        return any(self.key == k or self.key.startswith(f"{k}.") for k in STRICT_KEYS)

    def describe(self) -> str:
        note = _NOTES.get(self.key)
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}" + (
            f" ({note})" if note else ""
        )


def effective_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as the run uses it: interpolations resolved, overrides applied."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_changes(saved: Mapping[str, Any], cfg: DictConfig) -> list[ConfigChange]:
    """The keys whose values differ between `saved` (a checkpoint's effective config) and `cfg`.

    A key that is an interpolation in `cfg` (`dataloader.batch_size: ${training.batch_size}`) is
    left out: the key it points to is listed instead, and that is the one the user sets.
    """
    before, after = _flatten(saved), _flatten(effective_config(cfg))
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if old == new or key in _IGNORED_KEYS or _is_interpolation(cfg, key):
            continue
        changes.append(ConfigChange(key, old, new))
    return changes


def check_resume_changes(changes: Sequence[ConfigChange], checkpoint: Path) -> list[str]:
    """Refuse (ConfigError) changes that break exact resume; return one line per allowed change."""
    strict = [change for change in changes if change.strict]
    if strict:
        first = strict[0]
        others = [change.key for change in strict[1:]]
        also = f" (also changed: {', '.join(others)})" if others else ""
        restore = (
            f"remove {first.key}"
            if first.old is _MISSING
            else f"set {first.key}={_override_value(first.old)}"
        )
        raise ConfigError(
            f"{config_source()}{first.key}: {_show(first.new)} differs from {_show(first.old)} in"
            f" the checkpoint {checkpoint}, so the run would not continue as it began{also};"
            f" {restore} to resume it, or start a new run with another checkpointer.output_dir"
        )
    return [change.describe() for change in changes]


# -- how the recipe was started -----------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """A recipe run's command line: the recipe as typed, its config file and the overrides."""

    recipe: str
    config: str
    overrides: tuple[str, ...]


_invocation: Invocation | None = None


def record_invocation(recipe: str | Path, config: str | Path, overrides: Sequence[str]) -> None:
    """Remember how this process's recipe was started (for `resume_command`)."""
    global _invocation
    _invocation = Invocation(str(recipe), str(config), tuple(overrides))


def config_source() -> str:
    """`"<config file>: "`, the prefix of config errors, or "" when no recipe recorded one."""
    return f"{_invocation.config}: " if _invocation else ""


def resume_command() -> str:
    """The `tunegen run` command that continues this run: the same recipe, config and overrides,
    with `training.resume=auto` (the config is named only when it is not the recipe's default)."""
    if _invocation is None:
        return "tunegen run <recipe> training.resume=auto"
    words = ["tunegen", "run", _invocation.recipe]
    if Path(_invocation.config) != Path(_invocation.recipe).with_suffix(".yaml"):
        words += ["--config", _invocation.config]
    words += [o for o in _invocation.overrides if not o.lstrip("+~").startswith("training.resume")]
    words.append("training.resume=auto")
    return shlex.join(words)


# -- helpers ------------------------------------------------------------------------------------

_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "(absent)"})()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values."""
    if not isinstance(tree, Mapping) or (prefix and not tree):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return (
        isinstance(parent, DictConfig)
        and leaf in parent
        and OmegaConf.is_interpolation(parent, leaf)
    )


def _show(value: Any) -> str:
    return repr(value) if value is _MISSING else str(value)


def _override_value(value: Any) -> str:
    """A value as written in a `key=value` override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
