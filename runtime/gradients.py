"""Gradient helpers that generated training loops call between backward() and step()."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["scale_grads"]


@torch.no_grad()
def scale_grads(model: nn.Module, factor: float) -> None:
    """Multiply every existing gradient of `model` by `factor`, in place.

    Recipes sum the loss over tokens and divide the gradients once per optimizer step by the token
    count of the whole accumulation window, which keeps gradient accumulation exact for
    micro-batches of different lengths.
    """
    for param in model.parameters():
        if param.grad is not None:
            param.grad.mul_(factor)
