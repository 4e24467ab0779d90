"""The launch checks a recipe runs before it joins a process group (no process group needed)."""

from __future__ import annotations

import pytest
import torch

from tunegen.runtime.distributed import (
    init_distributed,
    refuse_multiprocess_launch,
    torchrun_command,
)
from tunegen.runtime.errors import ConfigError

CPU = torch.device("cpu")


def test_a_single_device_recipe_on_several_processes_stops_rank0_with_why(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"x\.py is a single-device recipe but was launched as 2"):
        refuse_multiprocess_launch("x.py")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped:
        refuse_multiprocess_launch("x.py")
    assert stopped.value.code == 2


def test_one_process_is_no_multiprocess_launch(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    refuse_multiprocess_launch("x.py")  # returns: nothing to refuse
    monkeypatch.setenv("WORLD_SIZE", "1")
    refuse_multiprocess_launch("x.py")


def test_a_multiprocess_recipe_without_torchrun_names_the_command(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError) as error:
        init_distributed(CPU, nproc_per_node=2, nnodes=2, node_rank=1, rdzv_endpoint="n0:29500")
    assert str(error.value) == (
        "distributed.nproc_per_node: this recipe runs on 4 processes; start it with tunegen run,"
        " or torchrun --nproc-per-node 2 --nnodes 2 --node-rank 1 --rdzv-backend c10d"
        " --rdzv-endpoint n0:29500 RECIPE --config CONFIG"
    )


def test_a_launch_other_than_the_config_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="says 4 x 1 node"):
        init_distributed(CPU, nproc_per_node=4)


def test_torchrun_command_on_one_node() -> None:
    assert torchrun_command(8) == "torchrun --nproc-per-node 8"
