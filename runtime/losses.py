"""Training losses.

The loss returns a SUM and a token count instead of a mean, so the recipe can average over every
target token in a gradient-accumulation window. Averaging each micro-batch and then the averages
over-weights the tokens of short batches; dividing the summed loss by the window's total token count
makes accumulation over k micro-batches exactly equal to one batch k times as large.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChunkedCrossEntropyLoss", "CrossEntropyLoss"]


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


class ChunkedCrossEntropyLoss(nn.Module):
    """`CrossEntropyLoss` computed from the final hidden states, a chunk of rows at a time.

    `forward(hidden, weight, labels)` takes the model's final hidden states (B, T, D) (what
    `Transformer.hidden_states` returns) and the output projection (V, D) instead of the logits.
    Only the positions whose next token carries loss are projected (prompt and padding rows
    cost nothing), in chunks of `chunk_size` rows (by default the rows of about 4 Mi fp32
    logits, 16 MiB: 512 rows of an 8k vocabulary; at least 64 rows); each chunk's logits live
    only while its loss and its gradients with respect to the hidden states and the weight are
    computed, in the forward pass. So the (B, T, V) logits, and their fp32 copy, never exist at
    once: on a 128k vocabulary that is most of a step's peak memory. The backward pass only
    scales the stored gradients. Values and gradients equal `CrossEntropyLoss` on `hidden @ weight.T`.

    Skipping the rows without a target also saves their share of the output projection: on
    CPU (W1's 8192 x 512 head, 4 x 256 positions) it measured as fast as the plain loss with
    every position a target and 1.6x faster with half of them masked (bench/chunked_loss.py).
    `training.chunked_loss: auto` (the default) uses it wherever it applies.
    """

    #: Default chunk: rows whose fp32 logits take about this many elements (16 MiB). A chunk's
    #: logits and their log-softmax are the loss's whole transient memory, and they are alive at
    #: the step's peak (after the forward pass), so they are kept small; 512 rows of an 8k
    #: vocabulary still run the projection at the matmul's full speed.
    CHUNK_ELEMENTS = 2**22

    def __init__(self, ignore_index: int = -100, chunk_size: int | None = None) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size

    def forward(self, hidden: Tensor, weight: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return the summed loss (fp32 scalar) and the number of targets (int64 scalar)."""
        if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
            raise ValueError(
                f"expected hidden (B, T, D) and labels (B, T), got {tuple(hidden.shape)}"
                f" and {tuple(labels.shape)}"
            )
        # Position t predicts labels[t + 1]; the last position of each row predicts nothing.
        ignore = torch.full_like(labels[:, :1], self.ignore_index)
        targets = torch.cat((labels[:, 1:], ignore), dim=1).reshape(-1)  # (B*T,)
        rows = (targets != self.ignore_index).nonzero().squeeze(1)  # (N,)
        loss_sum = _LinearCrossEntropy.apply(
            hidden.reshape(-1, hidden.shape[-1]),
            weight,
            targets[rows],
            rows,
            self.chunk_size or max(64, self.CHUNK_ELEMENTS // weight.shape[0]),
            torch.is_grad_enabled(),  # False in validation: the loss alone, no gradients
        )
        return loss_sum, rows.new_tensor(rows.numel())

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, chunk_size={self.chunk_size}"


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden[rows] @ weight.T, targets)), gradients computed chunk by chunk in
    the forward pass (d loss / d logits = softmax - one_hot, never stored whole)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,  # (B*T, D)
        weight: Tensor,  # (V, D)
        targets: Tensor,  # (N,)
        rows: Tensor,  # (N,) the rows of `hidden` that carry loss
        chunk_size: int,
        grad_enabled: bool,
    ) -> Tensor:
        want_hidden = grad_enabled and ctx.needs_input_grad[0]
        want_weight = grad_enabled and ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows.numel(), chunk_size):
            chunk_rows = rows[start : start + chunk_size]
            h = hidden.index_select(0, chunk_rows)  # (n, D)
            logprobs = (h @ weight.t()).float().log_softmax(-1)  # (n, V)
            target = targets[start : start + chunk_size]
            picked = torch.arange(len(target), device=target.device), target
            loss_sum -= logprobs[picked].sum()
            if not (want_hidden or want_weight):
                continue
            grad_logits = logprobs.exp_()  # d loss / d logits = softmax - one_hot
            grad_logits[picked] -= 1
            if want_hidden:
                grad_hidden.index_copy_(0, chunk_rows, grad_logits.to(weight.dtype) @ weight)
            if want_weight:  # accumulated inside the matmul: no (V, D) temporary per chunk
                grad_weight.addmm_(grad_logits.t(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> tuple:
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None
