"""Files that survive a crash: fsynced writes, safetensors in and out, and the temp-dir prefix.

Checkpoints, exported HF checkpoints and PEFT adapters are all written the same way: every file
goes into a hidden temp dir (named `TEMP_PREFIX` + ...) and is fsynced, then the dir is fsynced
and renamed into place, and its parent fsynced, so after a crash the result is either complete or
absent. These are the pieces of that; `checkpointing.Checkpointer.save` and
`hf_checkpoint.atomic_dir` put them together.

Weights are stored as safetensors, so reading them back never runs code from the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import CheckpointError, one_line

__all__ = [
    "TEMP_PREFIX",
    "fsync_dir",
    "prepare_tensors",
    "read_safetensors",
    "write_bytes",
    "write_safetensors",
]

TEMP_PREFIX = ".tmp-"
"""Name prefix of the hidden dirs a save fills before renaming them into place (and of the dirs an
old result is moved to before deletion): whatever starts with it is left over and may be removed."""


def prepare_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, each with its own storage (as safetensors requires).

    Tensors already on CPU are not copied unless they are non-contiguous or share storage with
    an earlier tensor (tied weights), so saving a CPU model costs no extra memory.
    """
    prepared: dict[str, Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen_storages:
            tensor = tensor.clone()
        elif tensor.numel():
            seen_storages.add(storage)
        prepared[name] = tensor
    return prepared


def write_safetensors(tensors: dict[str, Tensor], path: Path) -> int:
    """Write `tensors` (as `prepare_tensors` returns them) to `path` and fsync it; return its size.

    The size is what a completeness marker records, so a later reader can spot a truncated copy.
    safetensors writes through a private temp file (mode 0600); the file gets the mode any file
    the user creates gets (0666 less the umask), like the JSON files written beside it.
    """
    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())
    with open(path, "rb+") as file:
        os.fsync(file.fileno())
    return path.stat().st_size


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on CPU; a missing or broken file is a CheckpointError."""
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file: {one_line(error)}"
        ) from None


def write_bytes(path: Path, data: bytes) -> int:
    """Write `data` to `path` and fsync it before returning, so a crash cannot leave it half written
    once the dir holding it is renamed into place; return the number of bytes written."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return len(data)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new files, renames), so a rename survives a crash.

    Not possible on Windows, where this does nothing.
    """
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
