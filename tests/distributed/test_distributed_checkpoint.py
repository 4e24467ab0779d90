"""DistributedCheckpointer in a process group of one (gloo): atomic, complete, refuses another
world size. The 2-process behaviour is tests/distributed/test_distributed_training.py's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tunegen.runtime.distributed import shard_model
from tunegen.runtime.distributed_checkpoint import DistributedCheckpointer
from tunegen.runtime.environment import rng_state
from tunegen.runtime.errors import CheckpointError
from tunegen.runtime.models import tiny


@pytest.fixture
def group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sharded() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = shard_model(tiny())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(1))
    model(tokens).float().pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def _save(checkpointer: DistributedCheckpointer, step: int, model, optimizer) -> Path:
    return checkpointer.save(
        step,
        model.state_dict(),
        recipe_state={"global_step": step, "optimizer": {}, "rng": rng_state()},
    )


def test_save_is_complete_and_loads_back(group, tmp_path: Path) -> None:
    model, optimizer = _sharded()
    checkpointer = DistributedCheckpointer(output_dir=tmp_path, keep_last=1)
    checkpointer.attach(model, optimizer)
    path = _save(checkpointer, 1, model, optimizer)
    marker = json.loads((path / "checkpoint.json").read_text())
    assert marker["world_size"] == 1
    assert {".metadata", "__0_0.distcp", "rng_rank0.pt", "recipe_state.pt"} <= set(marker["files"])
    fresh, fresh_optimizer = _sharded()
    with torch.no_grad():
        for param in fresh.parameters():
            param.zero_()
    checkpointer.attach(fresh, fresh_optimizer)
    weights, state = checkpointer.load(path)
    assert state["global_step"] == 1 and "rng" in state
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name].full_tensor(), value.full_tensor()), name
    assert set(weights) == set(model.state_dict())


def test_a_save_killed_midway_leaves_the_previous_checkpoint(group, tmp_path: Path) -> None:
    model, optimizer = _sharded()
    checkpointer = DistributedCheckpointer(output_dir=tmp_path)
    checkpointer.attach(model, optimizer)
    first = _save(checkpointer, 1, model, optimizer)
    # What a kill during step 2's save leaves: a temp dir with some shards and no marker.
    stale = tmp_path / ".tmp-step_000002-dist"
    shutil.copytree(first, stale)
    os.remove(stale / "checkpoint.json")
    assert checkpointer.latest() == first
    second = _save(checkpointer, 2, model, optimizer)
    assert checkpointer.latest() == second and not stale.exists()


def test_a_checkpoint_of_another_world_size_is_refused_in_one_line(group, tmp_path: Path) -> None:
    model, optimizer = _sharded()
    checkpointer = DistributedCheckpointer(output_dir=tmp_path)
    checkpointer.attach(model, optimizer)
    path = _save(checkpointer, 1, model, optimizer)
    marker = json.loads((path / "checkpoint.json").read_text())
    (path / "checkpoint.json").write_text(json.dumps({**marker, "world_size": 2}))
    with pytest.raises(CheckpointError) as error:
        checkpointer.load(path)
    assert str(error.value) == (
        f"checkpoint {path} was written by 2 processes and this run has 1; resume with"
        " distributed.nproc_per_node x distributed.nnodes = 2 (each rank's data and RNG depend"
        " on it)"
    )
