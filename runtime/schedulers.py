"""Learning-rate schedules, each a `LambdaLR` over the optimizer's configured lr.

All three take the same keyword arguments, so `scheduler.name` can switch between them in the config
without touching the recipe. They follow the Hugging Face `transformers` conventions, so lr curves
match runs made with it: during warmup the factor is `step / warmup_steps` (step 0 trains at lr 0;
with `warmup_steps=0` the first step uses the full lr), then it decays to
`min_lr_ratio * lr` at `total_steps` and stays there if training runs longer.
The recipe calls `scheduler.step()` once per optimizer step. The lr factors are closures, which
`LambdaLR.state_dict()` stores as None, so scheduler state loads with `weights_only=True`.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .errors import ConfigError, out_of_bounds

__all__ = ["constant_with_warmup", "cosine_with_warmup", "linear_with_warmup"]


def cosine_with_warmup(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup to the peak lr, then half a cosine down to `min_lr_ratio * lr`."""
    _check(warmup_steps, total_steps, min_lr_ratio)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = _decay_progress(step, warmup_steps, total_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def linear_with_warmup(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup to the peak lr, then a straight line down to `min_lr_ratio * lr`."""
    _check(warmup_steps, total_steps, min_lr_ratio)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = _decay_progress(step, warmup_steps, total_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    return LambdaLR(optimizer, factor)


def constant_with_warmup(optimizer: Optimizer, *, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup to the peak lr, then constant. `total_steps` is accepted (and checked) only so
    that the three schedules are interchangeable in the config."""
    _check(warmup_steps, total_steps, 0.0)

    def factor(step: int) -> float:
        return step / warmup_steps if step < warmup_steps else 1.0

    return LambdaLR(optimizer, factor)


def _decay_progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay phase done at `step`, clamped to [0, 1]."""
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    return min(1.0, (step - warmup_steps) / decay_steps)


def _check(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
    """Reject settings that would give a silently wrong schedule."""
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"scheduler: {name} must be an integer, got {value!r}")
    for name, value, least in (("warmup_steps", warmup_steps, 0), ("total_steps", total_steps, 1)):
        problem = out_of_bounds(value, ge=least)  # the spec's wording
        if problem is not None:
            raise ConfigError(f"scheduler: {name}: {problem}")
    if warmup_steps > total_steps:
        raise ConfigError(
            f"training.warmup_steps: {warmup_steps} warmup steps exceed the run's {total_steps} "
            "steps; lower training.warmup_steps or lengthen the run (training.max_steps)"
        )
    problem = out_of_bounds(min_lr_ratio, ge=0, le=1)
    if problem is not None:
        raise ConfigError(f"scheduler: min_lr_ratio: {problem}")
