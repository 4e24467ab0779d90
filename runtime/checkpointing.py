"""Saving, finding and loading checkpoints without ever leaving a broken one behind.

Layout of a run's `output_dir`::

    step_000030/
        model.safetensors      weights (or adapter.safetensors for a LoRA run)
        recipe_state.pt        optional: optimizer, scheduler, RNG and data-loader state
        config.yaml            optional: the run's effective config (see `check_resume`)
        checkpoint.json        written last: step, file names and sizes, format version

A save writes everything into a hidden temp dir (`.tmp-step_000030-<pid>`), fsyncs each file and the
dir, renames it to `step_000030` and fsyncs `output_dir`, so after a crash a step dir is either
complete or absent. `checkpoint.json` is still the completeness marker: a dir counts only if the
marker names files that all exist with the recorded sizes, which also rejects a half-finished copy
of a run (rsync copies `checkpoint.json` before `model.safetensors`). Stale temp dirs from a killed
save are invisible to `latest()` and removed by the next save. Old checkpoints are pruned only once
the new one is complete, so a crash never leaves fewer checkpoints than before.

With `keep_best` (a metric name, `val_loss`), `save_best` also keeps the weights of the step
where that metric was lowest in `best/` (the same layout, its `checkpoint.json` also holding the
metric); `keep_last` prunes only `step_*` dirs, so it never deletes them, and resuming never
reads them.

Weights are stored as safetensors and recipe state is read back with `torch.load(weights_only=True)`:
loading a checkpoint never runs code from it. One process writes to an `output_dir` at a time.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig
from torch import Tensor, nn

from .durable_io import (
    TEMP_PREFIX,
    fsync_dir,
    prepare_tensors,
    read_safetensors,
    write_bytes,
    write_safetensors,
)
from .errors import CheckpointError, ConfigError, and_more, one_line
from .run_config import check_resume_changes, config_changes, config_source, effective_config

__all__ = [
    "BEST_DIR",
    "FORMAT_VERSION",
    "Checkpointer",
    "load_training_state",
    "load_weights_into",
    "read_safetensors",
]

FORMAT_VERSION = 1
"""Version of the step-dir layout and `checkpoint.json` fields; bumped on incompatible changes."""

_MARKER = "checkpoint.json"
_RECIPE_STATE = "recipe_state.pt"
_CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"step_(\d+)")
BEST_DIR = "best"
BEST_METRICS = ("val_loss",)  # what keep_best may name: lower is better
_OVERHEAD_BYTES = 1 << 20  # headers, pickle framing and the marker, generously


class Checkpointer:
    """Saves checkpoints under `output_dir` and finds the one to resume from.

    `keep_last` (None keeps all) bounds how many complete checkpoints stay on disk; the oldest are
    deleted after each successful save. Note that a save needs room for `keep_last + 1` of them.
    `keep_best` (None, or "val_loss") makes `save_best` keep the best step's weights in `best/`.
    """

    def __init__(
        self,
        *,
        output_dir: str | Path,
        keep_last: int | None = None,
        keep_best: str | None = None,
    ) -> None:
        if keep_best is not None and keep_best not in BEST_METRICS:
            raise ConfigError(
                f"checkpointer.keep_best: expected null or {', '.join(BEST_METRICS)}, "
                f"got {keep_best!r}"
            )
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise ConfigError(
                f"checkpointer.keep_last: must be a positive integer or null, got {keep_last!r}"
            )
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self._config: dict[str, Any] | None = None  # written into each checkpoint
        self._exports: list[Path] = []  # this run's export dirs, stale after a new checkpoint

    # -- saving ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        tensors: Mapping[str, Tensor],
        *,
        filename: str = "model.safetensors",
        recipe_state: Mapping | None = None,
    ) -> Path:
        """Atomically write `output_dir/step_{step:06d}/` and return its path.

        `tensors` are saved detached, contiguous and on CPU; tensors that share storage (tied
        embeddings) are cloned so safetensors accepts them. `recipe_state` must hold only what
        `torch.load(weights_only=True)` reads back (tensors, numbers, strings, None and
        dicts/lists/tuples of them, as optimizer and scheduler state dicts do); anything else is a
        TypeError now rather than an unloadable checkpoint later.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        _check_filename(filename)
        weight_bytes = _check_tensors(tensors)
        if recipe_state is not None:
            recipe_state = dict(recipe_state)
        state_bytes = _check_recipe_state(recipe_state, "recipe_state")
        final = self.output_dir / f"step_{step:06d}"
        if final.exists():
            if _problem(final) is None:
                raise CheckpointError(
                    f"{final} already holds a complete checkpoint; refusing to overwrite it"
                )
            raise CheckpointError(
                f"{final} exists but is not a complete checkpoint; remove it or choose another"
                " checkpointer.output_dir"
            )

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_dirs()  # first, so their space counts as free
        self._check_disk_space(final, weight_bytes + state_bytes + _OVERHEAD_BYTES)
        weights = prepare_tensors(tensors)

        temp = self.output_dir / f"{TEMP_PREFIX}{final.name}-{os.getpid()}"
        temp.mkdir()
        try:
            files = {filename: write_safetensors(weights, temp / filename)}
            del weights  # drop CPU copies of GPU tensors before pickling the optimizer state
            if recipe_state is not None:
                files[_RECIPE_STATE] = _write_torch(recipe_state, temp / _RECIPE_STATE)
            if self._config is not None:
                text = yaml.safe_dump(self._config, sort_keys=False)
                files[_CONFIG] = write_bytes(temp / _CONFIG, text.encode())
            marker = {"format_version": FORMAT_VERSION, "step": step, "files": files}
            write_bytes(temp / _MARKER, (json.dumps(marker, indent=2) + "\n").encode())
            fsync_dir(temp)
            os.rename(temp, final)
            fsync_dir(self.output_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._prune(keep=final)
        self._remove_stale_exports()
        return final

    @property
    def best_dir(self) -> Path:
        """Where `save_best` keeps the best step's weights: `output_dir/best`."""
        return self.output_dir / BEST_DIR

    def best(self) -> tuple[int, float] | None:
        """(step, metric value) of the checkpoint in `best/`, or None when there is none."""
        if not self.is_complete(self.best_dir):
            return None
        marker = _read_marker(self.best_dir)
        return int(marker["step"]), float(marker[self.keep_best or BEST_METRICS[0]])

    def save_best(
        self,
        step: int,
        tensors: Mapping[str, Tensor],
        *,
        filename: str = "model.safetensors",
        metrics: Mapping[str, float],
    ) -> Path | None:
        """Keep `tensors` in `best/` when `metrics[keep_best]` is lower than the value of the
        weights kept there (or none are); return `best/`, or None when nothing was written.

        The new weights are written completely (as `save` writes a step) before the old ones are
        swapped out, so a crash while writing leaves the old best in place.
        """
        if self.keep_best is None:
            raise ConfigError(
                "checkpointer.keep_best is null: there is no metric to keep the best by"
            )
        value = float(metrics[self.keep_best])
        kept = self.best()
        if not math.isfinite(value) or (kept is not None and value >= kept[1]):
            return None
        _check_filename(filename)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_dirs()
        self._check_disk_space(self.best_dir, _check_tensors(tensors) + _OVERHEAD_BYTES)
        temp = self.output_dir / f"{TEMP_PREFIX}{BEST_DIR}-{os.getpid()}"
        temp.mkdir()
        try:
            files = {filename: write_safetensors(prepare_tensors(tensors), temp / filename)}
            marker = {
                "format_version": FORMAT_VERSION,
                "step": step,
                self.keep_best: value,
                "files": files,
            }
            write_bytes(temp / _MARKER, (json.dumps(marker, indent=2) + "\n").encode())
            fsync_dir(temp)
            if self.best_dir.exists():
                os.rename(
                    self.best_dir, self.output_dir / f"{TEMP_PREFIX}delete-{BEST_DIR}-{os.getpid()}"
                )
            os.rename(temp, self.best_dir)
            fsync_dir(self.output_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._remove_stale_temp_dirs()
        return self.best_dir

    def _remove_stale_exports(self) -> None:
        """A new checkpoint makes this run's earlier exports stale: remove them (export writes
        them again), so no export on disk is older than the latest checkpoint."""
        for path in self._exports:
            if path.exists():
                doomed = path.parent / f"{TEMP_PREFIX}delete-{path.name}-{os.getpid()}"
                os.rename(path, doomed)
                shutil.rmtree(doomed)

    def _check_disk_space(self, final: Path, needed: int) -> None:
        free = shutil.disk_usage(self.output_dir).free
        if free < needed:
            raise CheckpointError(
                f"not enough disk space for checkpoint {final}: it needs about {_size(needed)}"
                f" but {self.output_dir} has {_size(free)} free"
            )

    def _remove_stale_temp_dirs(self) -> None:
        """Delete temp dirs left by a killed save or prune (only one process writes here)."""
        for entry in self.output_dir.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def _prune(self, *, keep: Path) -> None:
        """Delete the oldest complete checkpoints beyond `keep_last`, never `keep` itself."""
        if self.keep_last is None:
            return
        others = [path for _, path in self._complete() if path != keep]
        excess = len(others) + 1 - self.keep_last
        for path in others[: max(excess, 0)]:
            # Rename first so a kill mid-delete leaves a temp dir (cleaned later), not a half
            # step dir that nothing would ever remove.
            doomed = self.output_dir / f"{TEMP_PREFIX}delete-{path.name}-{os.getpid()}"
            os.rename(path, doomed)
            shutil.rmtree(doomed)

    # -- finding -----------------------------------------------------------------------------

    def _complete(self) -> list[tuple[int, Path]]:
        """All complete checkpoints in `output_dir` as (step, path), oldest first."""
        if not self.output_dir.is_dir():
            return []
        found = []
        for entry in self.output_dir.iterdir():
            match = _STEP_DIR.fullmatch(entry.name)
            if match and entry.is_dir() and _problem(entry) is None:
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """The highest-step complete checkpoint dir, or None; incomplete dirs are skipped."""
        complete = self._complete()
        return complete[-1][1] if complete else None

    def resume_from(self, resume: bool | str | None) -> Path | None:
        """Apply the `training.resume` setting and return the checkpoint to load, if any.

        None/False: start fresh, but refuse if `output_dir` already holds a run's checkpoints (we
        never overwrite them unasked). "auto": the latest checkpoint, or None for a fresh start.
        True: the latest checkpoint, which must exist. Any other string: that checkpoint dir, taken
        as given or, if it does not exist there, relative to `output_dir` (so "step_000030" works).
        """
        if resume is None or resume is False:
            latest = self.latest()
            if latest is not None:
                raise CheckpointError(
                    f"{self.output_dir} already holds checkpoints (latest {latest.name}); set"
                    " training.resume=auto to continue that run, or choose another"
                    " checkpointer.output_dir"
                )
            return None
        if resume == "auto":
            return self.latest()
        if resume is True:
            latest = self.latest()
            if latest is None:
                raise CheckpointError(
                    f"training.resume=true but {self.output_dir} holds no complete checkpoint"
                )
            return latest
        if not isinstance(resume, str) or not resume:
            raise ConfigError(
                f"training.resume: expected true, false, null, 'auto' or a checkpoint path,"
                f" got {resume!r}"
            )
        path = Path(resume)
        if not path.exists() and not path.is_absolute() and (self.output_dir / path).exists():
            path = self.output_dir / path
        if not path.is_dir():
            raise CheckpointError(f"training.resume: {resume} is not a checkpoint directory")
        problem = _problem(path)
        if problem is not None:
            raise CheckpointError(f"training.resume: {path} is incomplete: {problem}")
        return path

    def check_resume(
        self, resume: bool | str | None, *, config: DictConfig | None = None
    ) -> Path | None:
        """`resume_from(resume)` plus everything else a run can check before building a model.

        With the run's `config`: export dirs (`export.output_dir`, `export.merged_output_dir`)
        outside `output_dir` that already hold files are refused (those inside it belong to this
        run: a new checkpoint removes them and the export writes them again); when resuming, the
        keys that differ from the config stored in the checkpoint are printed one per line, and
        changes that would break exact resume are refused (`run_config.check_resume_changes`).
        From then on every save stores `config` as `config.yaml`.
        """
        path = self.resume_from(resume)
        if config is None:
            return path
        self._check_exports(config)
        if path is not None and (path / _CONFIG).is_file():
            saved = yaml.safe_load((path / _CONFIG).read_text(encoding="utf-8"))
            lines = check_resume_changes(config_changes(saved, config), path)
            if lines:
                print(f"resuming {path} with a changed config:", flush=True)
                for line in lines:
                    print(f"  {line}", flush=True)
        self._config = effective_config(config)
        return path

    def _check_exports(self, config: DictConfig) -> None:
        export = config.get("export")
        for key in ("output_dir", "merged_output_dir"):
            if not isinstance(export, DictConfig) or export.get(key) is None:
                continue
            path = Path(export[key])
            if self.owns(path):
                self._exports.append(path)
            elif path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ConfigError(
                    f"{config_source()}export.{key}: {path} already exists and is not inside"
                    f" this run's checkpointer.output_dir ({self.output_dir}); remove it or"
                    f" choose another export.{key}"
                )

    def owns(self, path: str | Path) -> bool:
        """Whether `path` lies inside `output_dir` (and so belongs to this run)."""
        root = self.output_dir.resolve()
        return root in Path(path).resolve().parents

    @staticmethod
    def is_complete(path: str | Path) -> bool:
        """Whether `path` is a complete checkpoint dir (its marker's files all present, sized)."""
        return Path(path).is_dir() and _problem(Path(path)) is None

    @staticmethod
    def step_of(path: str | Path | None) -> int:
        """The step a complete checkpoint dir was saved at; 0 for None (a fresh start)."""
        return 0 if path is None else int(_read_marker(Path(path))["step"])

    # -- loading -----------------------------------------------------------------------------

    def load(
        self, path: str | Path, *, filename: str = "model.safetensors"
    ) -> tuple[dict[str, Tensor], dict | None]:
        """Read a complete checkpoint: its tensors (on CPU) and its recipe state (None if absent).

        Recipe state is loaded with `weights_only=True` and `map_location="cpu"`;
        `optimizer.load_state_dict` moves it to the parameters' device.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        problem = _problem(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
        files = _read_marker(path)["files"]
        if filename not in files:
            held = ", ".join(name for name in files if name != _RECIPE_STATE) or "no weights"
            raise CheckpointError(f"checkpoint {path} has no {filename} (it holds {held})")
        tensors = read_safetensors(path / filename)
        recipe_state = None
        if _RECIPE_STATE in files:
            try:
                recipe_state = torch.load(
                    path / _RECIPE_STATE, map_location="cpu", weights_only=True
                )
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
                raise CheckpointError(
                    f"{path / _RECIPE_STATE} cannot be loaded safely: {one_line(error)}"
                ) from None
        return tensors, recipe_state


def load_training_state(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    recipe_state: Mapping[str, Any],
) -> None:
    """Load the optimizer and lr scheduler state of a checkpoint, keeping the current config's
    hyperparameters.

    The optimizer's moments and the scheduler's step come from the checkpoint; the peak lr,
    weight decay and the schedule's length are the ones the optimizer and scheduler were built
    with now (a resume with `training.lr` or `training.max_steps` changed uses the new values:
    the schedule continues at the saved step as if the run had been started with them). With an
    unchanged config this is exactly the saved state.
    """
    hyper = [
        {key: value for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]
    base_lrs = list(lr_scheduler.base_lrs)
    optimizer.load_state_dict(recipe_state["optimizer"])
    lr_scheduler.load_state_dict(recipe_state["lr_scheduler"])
    lr_scheduler.base_lrs = base_lrs
    for group, values in zip(optimizer.param_groups, hyper, strict=True):
        group.update(values)
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if lambdas is not None:  # the lr of the saved step under the current schedule
        step = lr_scheduler.last_epoch
        for group, base, factor in zip(optimizer.param_groups, base_lrs, lambdas, strict=True):
            group["lr"] = base * factor(step)
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def load_weights_into(
    model: nn.Module, tensors: Mapping[str, Tensor], *, strict: bool = True
) -> None:
    """Copy checkpoint `tensors` into `model`, reporting the first mismatch as one line.

    Every given tensor must name a parameter or buffer of the model, with the model's shape.
    With `strict=True` every model tensor must also be present; `strict=False` allows model
    tensors absent from the file, as in a LoRA run whose checkpoints hold only the adapters.
    Dtypes are cast to the model's.
    """
    expected = {
        name: value for name, value in model.state_dict().items() if isinstance(value, Tensor)
    }
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise CheckpointError(
            f"checkpoint tensor {unexpected[0]!r} is not in the model{and_more(unexpected, 'unexpected')}"
        )
    if strict:
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise CheckpointError(
                f"model tensor {missing[0]!r} is missing from the checkpoint{and_more(missing, 'missing')}"
            )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)} but the model expects"
                f" {tuple(expected[name].shape)}"
            )
    model.load_state_dict(dict(tensors), strict=strict)


# -- helpers -----------------------------------------------------------------------------------


def _problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None if it is."""
    marker = path / _MARKER
    if not marker.is_file():
        return f"{_MARKER} is missing (the save was interrupted?)"
    try:
        info = _read_marker(path)
    except (OSError, ValueError) as error:
        return f"{_MARKER} is unreadable: {one_line(error)}"
    if not isinstance(info, dict):
        return f"{_MARKER} is not a JSON object"
    version = info.get("format_version")
    if not isinstance(version, int):
        return f"{_MARKER} has no format_version"
    if version > FORMAT_VERSION:
        return f"it has format version {version}, newer than this tunegen reads ({FORMAT_VERSION})"
    files = info.get("files")
    if not isinstance(files, dict):
        return f"{_MARKER} lists no files"
    for name, size in files.items():
        file = path / name
        if Path(name).name != name:
            return f"{_MARKER} names a file outside the checkpoint: {name!r}"
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {_MARKER} says {size}"
    return None


def _read_marker(path: Path) -> Any:
    return json.loads((path / _MARKER).read_text(encoding="utf-8"))


def _check_filename(filename: str) -> None:
    if (
        not filename.endswith(".safetensors")
        or Path(filename).name != filename
        or filename.startswith(".")
    ):
        raise ValueError(f"filename must be a plain name ending in .safetensors, got {filename!r}")


def _check_tensors(tensors: Mapping[str, Tensor]) -> int:
    """Raise TypeError unless `tensors` maps names to tensors; return their total bytes."""
    total = 0
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            raise TypeError(f"checkpoint tensors must map str to Tensor, got {name!r}: {tensor!r}")
        total += tensor.numel() * tensor.element_size()
    return total


# Exact types: subclasses (numpy.float64 is a float, a namedtuple is a tuple) pickle as their own
# class, which weights_only loading refuses.
_ALLOWED_LEAVES = (str, int, float, bool, type(None), torch.dtype, torch.Size, torch.device)
_ALLOWED_MAPPINGS = (dict, OrderedDict)
_ALLOWED_SEQUENCES = (list, tuple)


def _check_recipe_state(value: Any, where: str) -> int:
    """Raise TypeError for anything `weights_only` loading refuses; return the tensors' bytes."""
    if type(value) in (Tensor, nn.Parameter):
        return value.numel() * value.element_size()
    if type(value) in _ALLOWED_LEAVES:
        return 0
    if type(value) in _ALLOWED_MAPPINGS:
        total = 0
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            total += _check_recipe_state(item, f"{where}[{key!r}]")
        return total
    if type(value) in _ALLOWED_SEQUENCES:
        return sum(_check_recipe_state(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which"
        " torch.load(weights_only=True) cannot read back; store tensors, numbers, strings or lists"
    )


def _write_torch(obj: Any, path: Path) -> int:
    with open(path, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    return path.stat().st_size


def _size(num_bytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    value = float(num_bytes)
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 (the last unit is used below)
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"
