"""Training on several processes with PyTorch's own engine: torchrun, the process group and FSDP2.

A distributed recipe (a spec with a `distributed:` section) is started by `torchrun` (or `tunegen
run`, which calls `torch.distributed.run`), one process per GPU (or per CPU worker with gloo).
`init_distributed` joins the process group that torchrun's environment describes; `shard_model`
applies FSDP2 (`fully_shard`) to every transformer block and then to the root, so each process
holds 1/world_size of the weights, gradients and optimizer state. The training loop all-reduces
its token counts (`sum_across_processes`) so that the loss is normalised exactly as in a single
process with the same global batch; `gather_full_model` makes every process hold the full weights
again for the final export, which rank 0 writes.

`refuse_multiprocess_launch` is what keeps a single-device recipe from racing with copies of
itself when it is launched with several processes.

gloo (CPU) note: FSDP2's `set_gradient_divide_factor(1.0)` reduces with `ReduceOp.PREMUL_SUM`,
which gloo does not implement; the recipes therefore keep FSDP2's default (the mean over ranks)
and multiply the gradients by the world size once per step.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

# How long ranks > 0 of a refused launch wait before exiting (torchrun ends the rest at once).
_QUIET_RANK_DELAY_S = 5.0

__all__ = [
    "Processes",
    "cleanup_distributed",
    "gather_full_model",
    "init_distributed",
    "is_main_process",
    "launched_processes",
    "refuse_multiprocess_launch",
    "shard_model",
    "sum_across_processes",
    "torchrun_command",
]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes the files that are written once."""
        return self.rank == 0


def launched_processes() -> int:
    """How many processes the launcher (torchrun) started for this run; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is rank 0 (or the only process): the one that logs and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def refuse_multiprocess_launch(recipe_name: str) -> None:
    """Stop a single-device recipe that torchrun started as several processes.

    Every copy would train the same model on the same data and write the same run dir. Rank 0
    says why in one line (exit status 2); the other ranks exit quietly.
    """
    world_size = launched_processes()
    if world_size <= 1:
        return
    if not is_main_process():
        # torchrun stops every process once one fails: let rank 0 fail first, so its line is
        # printed before the launcher ends it.
        time.sleep(_QUIET_RANK_DELAY_S)
        sys.exit(2)
    raise ConfigError(
        f"{recipe_name} is a single-device recipe but was launched as {world_size} processes"
        " (WORLD_SIZE); run it as one process, or add a distributed: section to its spec and"
        " regenerate it"
    )


def init_distributed(
    device: torch.device,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> Processes:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).

    `device` is the resolved `environment.device`: CUDA runs use NCCL and one GPU per local rank,
    CPU runs use gloo. The run's size must be `nproc_per_node * nnodes` as the config says (the
    checkpoints and the data order depend on it). Started without torchrun, a one-process
    config runs as a group of one; a larger one is refused with the torchrun command that
    launches it (`node_rank` and `rdzv_endpoint` go into that command).
    Processes other than rank 0 print nothing to stdout: rank 0 reports for the run.
    """
    expected = nproc_per_node * nnodes
    if "WORLD_SIZE" not in os.environ:
        if expected > 1:
            raise ConfigError(
                f"distributed.nproc_per_node: this recipe runs on {expected} processes; start it"
                f" with tunegen run, or {torchrun_command(nproc_per_node, nnodes, node_rank, rdzv_endpoint)}"
                " RECIPE --config CONFIG"
            )
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    world_size = launched_processes()
    if world_size != expected:
        raise ConfigError(
            f"distributed.nproc_per_node: the config says {nproc_per_node} x {nnodes} node(s) ="
            f" {expected} processes but {world_size} were launched; set"
            f" distributed.nproc_per_node and distributed.nnodes to match the launch"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _local_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if rank != 0:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process's life
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def torchrun_command(
    nproc_per_node: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None
) -> str:
    """The torchrun command line (without the script) that starts this run on one node."""
    words = ["torchrun", f"--nproc-per-node {nproc_per_node}"]
    if nnodes > 1 or rdzv_endpoint is not None:
        words += [f"--nnodes {nnodes}", f"--node-rank {node_rank}", "--rdzv-backend c10d"]
        words.append(f"--rdzv-endpoint {rdzv_endpoint or 'HOST:PORT'}")
    return " ".join(words)


def _local_device(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per process on a node (cuda:LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(
            f"environment.device: {device.type!r} cannot run several processes; use cuda or cpu"
        )
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    visible = torch.cuda.device_count()
    if per_node > visible:
        raise ConfigError(
            f"distributed.nproc_per_node: {per_node} processes per node but only {visible} CUDA"
            " device(s) are visible; one process per GPU"
        )
    cuda = torch.device("cuda", local_rank)
    torch.cuda.set_device(cuda)
    return cuda


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shard_model(
    model: nn.Module,
    *,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Apply FSDP2 to each transformer block (`model.model.layers`), then to the whole model.

    Sharding block by block lets each block's all-gather overlap the previous block's compute
    and frees a block's full weights after use (`reshard_after_forward`); the root holds the
    embeddings, the final norm and the (possibly tied) output head. Frozen base weights and
    trainable adapters shard together. With bf16 weights the gradients are reduced in fp32
    (`MixedPrecisionPolicy`). `cpu_offload` (CUDA only) keeps the shards in CPU memory.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options: dict = {"reshard_after_forward": reshard_after_forward}
    if dtype != torch.float32:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if cpu_offload and next(model.parameters()).device.type == "cuda":
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.model.layers:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def sum_across_processes(*values: float) -> tuple[float, ...]:
    """Each value summed over every process (one all-reduce, in float64); ints stay ints."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return tuple(
        round(total) if isinstance(value, int) else total
        for value, total in zip(values, totals.tolist(), strict=True)
    )


def gather_full_model(model: nn.Module) -> nn.Module | None:
    """The sharded `model` as one plain (unsharded) module on the CPU of rank 0; None elsewhere.

    Every process must call it (the weights are all-gathered). Rank 0 gets a copy with the same
    module classes and attributes and the full weights, which the single-device export code
    writes as it would any model; the sharded model is left as it is.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if dist.get_rank() != 0:
        return None
    plain = _plain_copy(model)
    for name, tensor in full.items():
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner)
        if leaf in module._parameters:
            requires_grad = module._parameters[leaf].requires_grad
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=requires_grad)
        else:
            module._buffers[leaf] = tensor
    return plain


def _plain_copy(module: nn.Module) -> nn.Module:
    """`module`'s tree with FSDP2's classes and hooks taken off; parameters are placeholders
    (`gather_full_model` fills them in) and buffers are moved to the CPU."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if issubclass(cls, FSDPModule):  # fully_shard swapped in a class FSDP<Name>(FSDPModule, Name)
        cls = next(base for base in cls.__bases__ if not issubclass(base, FSDPModule))
    copy = object.__new__(cls)
    nn.Module.__init__(copy)
    fresh = set(vars(copy))
    for key, value in vars(module).items():
        if key not in fresh:  # the module's own attributes (sizes, flags, hf_config)
            setattr(copy, key, value)
    copy._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, buffer in module._buffers.items():
        copy._buffers[name] = None if buffer is None else buffer.detach().cpu()
    for name, param in module._parameters.items():
        copy._parameters[name] = (
            None if param is None else nn.Parameter(torch.empty(0), param.requires_grad)
        )
    for name, child in module._modules.items():
        copy._modules[name] = None if child is None else _plain_copy(child)
    return copy


def cleanup_distributed() -> None:
    """Wait for every process (rank 0 may still be exporting), then leave the process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
