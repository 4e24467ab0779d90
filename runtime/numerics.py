"""Guards against numbers that have stopped meaning anything."""

from __future__ import annotations

import math

from tunegen.runtime.errors import TunegenError

__all__ = ["NonFiniteLossError", "NonFiniteStepSkipper", "check_finite_loss"]


class NonFiniteLossError(TunegenError):
    """The loss became NaN or infinite; training cannot usefully continue."""


def check_finite_loss(loss: float, *, step: int) -> None:
    """Stop the run before a NaN/inf loss reaches the weights.

    Called before the optimizer step, so the weights and the last checkpoint stay as they were.
    """
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"step {step}: the loss is {loss}; stopped before updating the weights (the last "
            "checkpoint is intact). Lower training.lr or check the data of this step."
        )


class NonFiniteStepSkipper:
    """For `training.on_nonfinite_loss: skip`: decide, step by step, whether to drop the update.

    A rare NaN/inf loss (one bad batch, an fp16 overflow) is skipped: the recipe throws away that
    step's gradients and goes on. A loss that stays non-finite means the run itself has diverged,
    so after `max_consecutive` skipped steps in a row the run stops as `check_finite_loss` would.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def should_skip(self, loss: float, *, step: int) -> bool:
        """True if step `step` must not update the weights; raises once skipping is hopeless."""
        if math.isfinite(loss):
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"step {step}: the loss has been {loss} for {self.consecutive} steps in a row; "
                "stopped (the last checkpoint is intact). Lower training.lr or check the data."
            )
        return True
