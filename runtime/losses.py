"""Training losses.

The loss returns a SUM and a token count instead of a mean, so the recipe can average over every
target token in a gradient-accumulation window. Averaging each micro-batch and then the averages
over-weights the tokens of short batches; dividing the summed loss by the window's total token count
makes accumulation over k micro-batches exactly equal to one batch k times as large.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Next-token cross-entropy on unshifted labels, returning `(loss_sum, num_tokens)`.

    Labels follow the Hugging Face convention: `labels[b, t]` is the token AT position t (the same
    ids as the input, with `ignore_index` wherever no loss is wanted, e.g. prompt and padding). The
    logits at position t predict the token at t + 1, so the loss compares `logits[:, :-1]` with
    `labels[:, 1:]`; the shift happens here, once, rather than in every data pipeline.

    The loss is computed in fp32 whatever the logits' dtype (bf16 log-softmax over a large vocabulary
    loses visible precision) and summed over the non-ignored targets. `num_tokens` counts those
    targets. The recipe adds both up over a gradient-accumulation window and divides:
    `loss = sum(loss_sums) / sum(num_tokens)`, which is exact for variable-length batches. A batch
    with no targets gives `loss_sum == 0` and `num_tokens == 0` rather than NaN.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return the summed loss (fp32 scalar) and the number of targets (int64 scalar)."""
        if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
            raise ValueError(
                f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)}"
                f" and {tuple(labels.shape)}"
            )
        vocab_size = logits.shape[-1]
        shifted_logits = logits[:, :-1, :].reshape(-1, vocab_size).float()  # (B*(T-1), V)
        targets = labels[:, 1:].reshape(-1).long()  # (B*(T-1),)
        loss_sum = F.cross_entropy(
            shifted_logits, targets, ignore_index=self.ignore_index, reduction="sum"
        )
        num_tokens = (targets != self.ignore_index).sum()
        return loss_sum, num_tokens

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"
