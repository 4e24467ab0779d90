"""Optimizer helpers: stepping each parameter inside the backward pass.

`step_in_backward(optimizer)` makes `optimizer` update every parameter as soon as its gradient
has been accumulated, then drop that gradient, so a full fine-tune never holds the gradients of
the whole model at once (the memory of one more copy of the weights, in their dtype). The
optimizer stays one ordinary `torch.optim` optimizer: its state dict, the lr scheduler and
checkpoints work unchanged, and `optimizer.step()` after the backward pass finds no gradient
left and does nothing.

It is exact only when each step's gradient is complete after one backward pass and is applied
as computed: no gradient accumulation over micro-batches, no clipping by the global norm (which
needs every gradient first), and the loss scaled before `backward()`. The spec validator refuses
`training.optimizer_in_bwd` with `training.grad_accum > 1` or `training.clip_grad_norm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["step_in_backward"]


def step_in_backward(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Register, on every parameter of `optimizer`, a hook that steps it once its gradient is
    accumulated and then frees the gradient. Returns a function that removes the hooks.

    `optimizer.step()` skips parameters whose `.grad` is None, and while the backward pass runs
    every other parameter's gradient is None (not reached yet, or already applied and freed),
    so each call updates exactly the one parameter whose gradient just arrived, with the same
    arithmetic as one step over all of them.
    """

    def hook(param: torch.Tensor) -> None:
        optimizer.step()
        param.grad = None

    handles = [
        param.register_post_accumulate_grad_hook(hook)
        for group in optimizer.param_groups
        for param in group["params"]
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove
