"""Batch variable-length examples into padded tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["IGNORE_INDEX", "padded_collate"]

# Label value that `torch.nn.functional.cross_entropy` skips (its default `ignore_index`).
IGNORE_INDEX = -100


def padded_collate(
    batch: Sequence[dict[str, list[int]]], *, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, torch.Tensor]:
    """Right-pad `tokens` with `pad_id` and `labels` with `ignore_index` to the longest example.

    Returns `{"tokens": (B, T), "labels": (B, T)}` int64 tensors. Padding goes on the right so
    that, under causal attention, no real token ever attends to it.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(len(example["tokens"]) for example in batch)
    tokens = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), ignore_index, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example["tokens"])
        tokens[row, :n] = torch.tensor(example["tokens"], dtype=torch.long)
        labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
    return {"tokens": tokens, "labels": labels}
