"""Where and how a recipe runs: device, dtype, seeding and the RNG state saved with a checkpoint.

The recipe calls `resolve_device` and `resolve_dtype` once in `setup`, so a config that asks for
hardware the machine lacks fails before any model is built, with a message naming the config key.
`rng_state` / `set_rng_state` let a resumed run draw exactly the random numbers (dropout masks,
data shuffles) an uninterrupted run would have drawn. The state is made of plain lists, numbers,
strings and tensors so that `torch.load(..., weights_only=True)` can read it back: a checkpoint
must never need to unpickle arbitrary objects.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

try:  # numpy is optional: seed and capture it only when a data pipeline could be using it
    import numpy as np
except ImportError:  # pragma: no cover - numpy ships with the test environment
    np = None

__all__ = [
    "has_native_bf16",
    "resolve_device",
    "resolve_dtype",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """Turn `environment.device` into a `torch.device` that exists on this machine.

    "auto" picks CUDA, then Apple MPS, then CPU. An explicit device ("cpu", "cuda", "cuda:1",
    "mps") must be available: silently falling back to CPU would turn a one-hour run into a week.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"environment.device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"environment.device: {name!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"environment.device: {name!r} requested but only {count} CUDA device(s) are visible"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"environment.device: {name!r} requested but MPS is not available")
        return device
    raise ConfigError(
        f"environment.device: {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps"
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn `environment.dtype` ("fp32", "bf16" or "fp16") into a `torch.dtype` usable on `device`.

    bf16 needs an Ampere-or-newer CUDA GPU (emulated bf16 on older cards is slow enough to be a
    mistake). fp16 is refused on CPU: CPU kernels for it are slow or missing, and fp16 training
    needs loss scaling, which the runtime does not ship.
    """
    if name == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    if name not in _DTYPES:
        raise ConfigError(
            f"environment.dtype: {name!r} is not one of {', '.join([*_DTYPES, 'auto'])}"
        )
    dtype = _DTYPES[name]
    if dtype is torch.bfloat16 and device.type == "cuda":
        with torch.cuda.device(device):
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        if not supported:
            raise ConfigError(
                f"environment.dtype: 'bf16' requested but CUDA device {device} does not support"
                " bfloat16; use fp32"
            )
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError(
            "environment.dtype: 'fp16' is not supported on CPU (it needs a grad scaler the runtime"
            " does not ship); use bf16 or fp32"
        )
    return dtype


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware: a CUDA GPU with native bf16, or a CPU with
    AVX512-BF16 or AMX (read from /proc/cpuinfo's flags; False where that file is missing).

    CPUs without them emulate bf16 matmuls through fp32 conversions, which measured slower than
    plain fp32 (../shared/PERFORMANCE_NOTES.md), so `dtype: auto` keeps fp32 there.
    """
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator (if numpy is installed) and torch.

    `torch.manual_seed` also seeds every CUDA device, so one call covers CPU and GPU.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        # numpy's legacy seeding accepts only this range; reject it here with the config key.
        raise ConfigError(f"environment.seed: {seed!r} is not an integer in [0, 2**32)")
    random.seed(seed)
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture every global RNG a training step can draw from, in a `weights_only`-loadable form.

    Python's state tuple becomes lists, numpy's becomes lists and numbers, torch's are tensors.
    CUDA states are captured for every visible device (an empty list without CUDA).
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by `rng_state` (for instance after `torch.load`).

    Tensors are moved to CPU first, so a state loaded with `map_location="cuda"` still works.
    A numpy state is restored only if numpy is installed; CUDA states are restored for as many
    devices as both the saved run and this machine have (resuming on different hardware cannot
    reproduce the old GPU draws anyway).
    """
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    torch.set_rng_state(state["torch_cpu"].cpu())
    saved_cuda = state.get("torch_cuda", [])
    if saved_cuda and torch.cuda.is_available():
        for index in range(min(len(saved_cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved_cuda[index].cpu(), device=index)
    if np is not None and "numpy" in state:
        saved = state["numpy"]
        np.random.set_state(
            (
                saved["kind"],
                np.asarray(saved["keys"], dtype=np.uint32),
                saved["pos"],
                saved["has_gauss"],
                saved["cached_gaussian"],
            )
        )
