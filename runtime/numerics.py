"""Guards against numbers that have stopped meaning anything."""

from __future__ import annotations

import math

from tunegen.runtime.errors import TunegenError

__all__ = ["NonFiniteLossError", "check_finite_loss"]


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
