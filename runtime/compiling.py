"""Regional compilation: `torch.compile` each transformer block rather than the whole model.

All blocks of a model share one code shape, so compiling them one by one costs about one
block's compile (the later ones reuse the cached graph), while compiling the whole model would
trace every layer and the loss together and recompile on every change of the surrounding
Python. Each block is compiled in place (`nn.Module.compile`), so parameter names, state dicts,
LoRA adapters and checkpoints stay exactly as in eager mode.

Compilation happens lazily in the first forward pass; `CompileReport` logs how long that first
step took, once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from torch import nn

__all__ = ["CompileReport", "compile_blocks", "is_compiled", "missing_compiler"]


def missing_compiler(device_type: str) -> str | None:
    """Why torch.compile cannot run on `device_type` here, or None: on CPU the inductor backend
    writes C++ and needs a C++ compiler (g++, c++ or cc on PATH)."""
    if device_type != "cpu":
        return None
    if any(shutil.which(name) for name in ("g++", "c++", "cc", "clang++")):
        return None
    return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"


def compile_blocks(model: nn.Module) -> int:
    """Compile every block of `model.model.layers` in place; return how many were compiled."""
    layers = model.model.layers
    for layer in layers:
        layer.compile()
    return len(layers)


class CompileReport:
    """Logs `compiled N blocks in X s` after the first step (which compiled them)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.started: float | None = None
        self.done = False

    def start(self) -> None:
        """Call just before the first training step."""
        self.started = time.perf_counter()

    def step_done(self, log_text: Callable[[str], None]) -> None:
        """Call after every step; logs once, after the first."""
        if self.done or self.started is None:
            return
        self.done = True
        seconds = time.perf_counter() - self.started
        log_text(
            f"compiled {self.num_blocks} blocks in {seconds:.1f} s (the first step, compile included)"
        )


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` was compiled in place."""
    return getattr(module, "_compiled_call_impl", None) is not None
