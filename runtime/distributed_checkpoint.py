"""Sharded checkpoints of a multi-process (FSDP2) run, written with `torch.distributed.checkpoint`.

The layout and the guarantees are the single-device `Checkpointer`'s: a step dir appears complete
or not at all, `checkpoint.json` (written last, by rank 0) lists every file with its size, and
resuming, pruning and export bookkeeping are the same. What differs is inside a step dir::

    step_000030/
        .metadata, __0_0.distcp, __1_0.distcp, ...   weights and optimizer state (DCP), one file
                                                      per rank, each holding that rank's shards
        rng_rank0.pt, rng_rank1.pt, ...               every rank's RNG state
        recipe_state.pt                               step, lr scheduler and the run's size
        config.yaml, checkpoint.json

Every rank calls `save` and `load` (they are collectives). A save goes to a hidden temp dir that
rank 0 renames once every rank has written its part, so a run killed mid-save keeps its previous
checkpoint. The optimizer state is saved with fully qualified parameter names
(`get_optimizer_state_dict`). A checkpoint resumes only with the number of processes that wrote
it: the data each rank reads and its RNG stream depend on it (one line says so otherwise); the
final export (`hf_model/`, `peft_adapter/`) is what moves to another number of devices.
Multi-node runs need `output_dir` on a file system every node sees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from .checkpointing import (
    _CONFIG,
    _MARKER,
    _RECIPE_STATE,
    FORMAT_VERSION,
    Checkpointer,
    _problem,
    _read_marker,
    _write_torch,
)
from .durable_io import TEMP_PREFIX, fsync_dir, write_bytes
from .errors import CheckpointError

__all__ = ["DistributedCheckpointer"]


class DistributedCheckpointer(Checkpointer):
    """A `Checkpointer` whose saves and loads are collectives of every rank of an FSDP2 run.

    `attach(model, optimizer)` once both are built (the recipe's `setup`); `save` and `load`
    then take and return what the single-device checkpointer does, so the recipe calls them the
    same way: `tensors` (the model's sharded state dict, or only its adapters) and `recipe_state`
    (its `optimizer` entry is replaced by the attached optimizer's sharded state; `rng` is kept
    per rank).
    """

    def __init__(self, *, output_dir: str | Path, keep_last: int | None = None) -> None:
        super().__init__(output_dir=output_dir, keep_last=keep_last)
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The sharded model and its optimizer, whose state `save` and `load` move."""
        self._model, self._optimizer = model, optimizer

    # -- saving ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        tensors: Mapping[str, Tensor],
        *,
        filename: str = "model.safetensors",
        recipe_state: Mapping | None = None,
    ) -> Path:
        """Every rank writes its shards into a temp dir; rank 0 completes and renames it."""
        rank = dist.get_rank()
        final = self.output_dir / f"step_{step:06d}"
        temp = self.output_dir / f"{TEMP_PREFIX}{final.name}-dist"
        _agree(self._prepare(final, temp) if rank == 0 else None)
        state = dict(recipe_state or {})
        rng = state.pop("rng", None)
        state.pop("optimizer", None)
        dcp.save(self._sharded_state(dict(tensors)), checkpoint_id=temp)
        if rng is not None:
            _write_torch(rng, temp / f"rng_rank{rank}.pt")
        dist.barrier()
        if rank == 0:
            self._complete_save(step, temp, final, state)
        dist.barrier()
        return final

    def _prepare(self, final: Path, temp: Path) -> str | None:
        """Rank 0: refuse an existing step dir, clear stale temp dirs, make the temp dir."""
        if final.exists():
            return (
                f"{final} already holds a complete checkpoint; refusing to overwrite it"
                if _problem(final) is None
                else f"{final} exists but is not a complete checkpoint; remove it or choose"
                " another checkpointer.output_dir"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_dirs()
        temp.mkdir()
        return None

    def _complete_save(self, step: int, temp: Path, final: Path, state: dict) -> None:
        """Rank 0, once every rank wrote: recipe state, config, the marker, then the rename."""
        world_size = dist.get_world_size()
        _write_torch({**state, "world_size": world_size}, temp / _RECIPE_STATE)
        if self._config is not None:
            write_bytes(temp / _CONFIG, yaml.safe_dump(self._config, sort_keys=False).encode())
        files = {entry.name: entry.stat().st_size for entry in sorted(temp.iterdir())}
        marker = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "world_size": world_size,
            "files": files,
        }
        write_bytes(temp / _MARKER, (json.dumps(marker, indent=2) + "\n").encode())
        fsync_dir(temp)
        os.rename(temp, final)
        fsync_dir(self.output_dir)
        self._prune(keep=final)
        self._remove_stale_exports()

    def _sharded_state(self, weights: dict[str, Tensor]) -> dict[str, Any]:
        model, optimizer = self._attached()
        return {"weights": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}

    def _attached(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self._model is None or self._optimizer is None:
            raise RuntimeError("call DistributedCheckpointer.attach(model, optimizer) first")
        return self._model, self._optimizer

    def _remove_stale_exports(self) -> None:
        if dist.get_rank() == 0:  # exports are written (and removed) by rank 0 only
            super()._remove_stale_exports()

    # -- loading -----------------------------------------------------------------------------

    def load(
        self, path: str | Path, *, filename: str = "model.safetensors"
    ) -> tuple[dict[str, Tensor], dict | None]:
        """Load this rank's shards of the weights and optimizer state, in place.

        Returns the weights (the model's own sharded tensors, already holding the checkpoint's
        values) and the recipe state, whose `optimizer` is the loaded optimizer's state dict and
        `rng` this rank's RNG state.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        problem = _problem(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
        saved_by = _read_marker(path).get("world_size")
        world_size = dist.get_world_size()
        if saved_by is None:
            raise CheckpointError(
                f"checkpoint {path} was written by a single-device run; a distributed run"
                " resumes only its own checkpoints (start it from the exported model instead)"
            )
        if saved_by != world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved_by} processes and this run has"
                f" {world_size}; resume with distributed.nproc_per_node x distributed.nnodes ="
                f" {saved_by} (each rank's data and RNG depend on it)"
            )
        model, optimizer = self._attached()
        state = self._sharded_state(_saved_weights(model, path))
        dcp.load(state, checkpoint_id=path)
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        recipe_state = torch.load(path / _RECIPE_STATE, map_location="cpu", weights_only=True)
        recipe_state["optimizer"] = optimizer.state_dict()
        rng_file = path / f"rng_rank{dist.get_rank()}.pt"
        if rng_file.is_file():
            recipe_state["rng"] = torch.load(rng_file, map_location="cpu", weights_only=True)
        return state["weights"], recipe_state


def _saved_weights(model: nn.Module, path: Path) -> dict[str, Tensor]:
    """The model's state-dict tensors that the checkpoint at `path` holds (all of them for a
    full fine-tune, the adapters for LoRA): the destinations DCP loads into."""
    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    own = model.state_dict()
    names = [key.removeprefix("weights.") for key in saved if key.startswith("weights.")]
    unknown = [name for name in names if name not in own]
    if unknown:
        raise CheckpointError(f"checkpoint tensor {unknown[0]!r} is not in the model")
    return {name: own[name] for name in names}


def _agree(problem: str | None) -> None:
    """Share rank 0's verdict with every rank, so all raise (or go on) together."""
    verdict = [problem]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise CheckpointError(verdict[0])
