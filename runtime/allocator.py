"""Keep the memory a training step frees for the next step, instead of handing it back to the OS.

Every step allocates and frees the same activations and gradients. On Linux, glibc's malloc gives
free memory at the top of its heap back to the kernel once more than its trim threshold is free
(128 KiB at first, then twice the largest mapped chunk freed, at most 64 MiB), and the next step
faults the pages in again, each one zeroed by the kernel. On a CPU fine-tune that was 44-58k page faults per
step (about 200 MiB) on the W2 shape of `bench/compare.py`; with the heap kept (no trimming, and
chunks up to 32 MiB, glibc's most, served from the heap rather than fresh mappings) 20k (full) and
5k (LoRA), and steps 3-5% faster, at the same peak RSS: the peak is the heap's high-water mark
either way (docs/benchmarks.md).

Allocations of tensors over 32 MiB are still mapped and unmapped one by one, as before; GPU memory
is torch's caching allocator's business and is not affected. Settings the user made with glibc's
own environment variables (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`)
are left as they are, and so is any other C library (macOS, musl), or a malloc preloaded in
glibc's place (jemalloc, tcmalloc), which does not read these settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed heap memory for reuse; True if it was set.

    Process-wide and for the rest of the process (a recipe's process trains until it exits).
    False, with nothing changed, off glibc or where the user set glibc's malloc variables.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc without the usual soname
        return False
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    trimmed = libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    return mapped == 1 and trimmed == 1
