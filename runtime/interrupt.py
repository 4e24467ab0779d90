"""Ctrl-C and SIGTERM during training: finish the step, save, say how to continue, exit 130/143.

A recipe's `train()` creates a `StopOnSignal` before its loop and calls `check(step)` after every
optimizer step. The first SIGINT or SIGTERM only sets a flag (the step in flight finishes); at the
next `check` the recipe's `save` writes a complete checkpoint, the exact command that resumes the
run is printed, and the process exits with 128 + the signal number (130 for SIGINT, 143 for
SIGTERM), as shells expect. A second signal stops at once by raising `Interrupted` wherever the
program is: a checkpoint being written then is dropped whole (saves go through a temp dir that is
renamed into place only when complete), so the previous one stays the latest.

Outside training (`run_main` installs it for the whole run) SIGTERM raises `Interrupted` too, so a
terminated run exits 143 through the same path as Ctrl-C rather than dying without a word.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType

from .progress import echo, end_live_line
from .run_config import resume_command

__all__ = ["Interrupted", "StopOnSignal", "raise_on_sigterm"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal; `exit_code` is 128 + its number."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `Interrupted` (exit 143), as SIGINT raises KeyboardInterrupt (130)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step.

    `save` writes a checkpoint of the current step and returns its dir (the recipe's
    `save_checkpoint`, which does nothing when this step is already saved; `latest` then names
    it). Handlers are installed on creation and put back by `release`.
    """

    def __init__(self, save: Callable[[], object], latest: Callable[[], object]) -> None:
        self._save = save
        self._latest = latest
        self.signum: int | None = None
        self._previous = {signum: signal.signal(signum, self._handle) for signum in _SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, step: int) -> None:
        """After an optimizer step: if a signal came, save, print how to resume and exit.

        In a multi-process run the processes agree first (one all-reduce): a signal that
        reached any of them stops all of them after the same step, so they save together.
        """
        self.signum = _agreed(self.signum)
        if self.signum is not None:
            self._stop(step)

    def release(self, step: int) -> None:
        """After training: restore the previous handlers; a signal that came during the last
        steps or the final save still stops the run here (its checkpoint is complete)."""
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler not set from Python
                signal.signal(signum, handler)
        self.check(step)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Interrupted(
                signum,
                "stopped at once; steps after the latest complete checkpoint are lost; resume"
                f" with: {resume_command()}",
            )
        self.signum = signum
        name = signal.Signals(signum).name
        echo(
            f"{name}: stopping after this step to save a checkpoint (send it again to stop at"
            " once)",
            file=sys.stderr,
        )

    def _stop(self, step: int) -> None:
        assert self.signum is not None
        self._save()
        end_live_line()
        print(
            f"interrupted at step {step}; checkpoint saved to {self._latest()}; resume with:"
            f" {resume_command()}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + self.signum)


def _agreed(signum: int | None) -> int | None:
    """The signal any process of a multi-process (torchrun) run received, else None; in a
    single process, `signum` itself."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return signum
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([signum or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None
