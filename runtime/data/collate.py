"""Batch variable-length examples into padded tensors, or packs of them into packed rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["IGNORE_INDEX", "grouped_padded_collate", "packed_collate", "padded_collate"]

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


def grouped_padded_collate(
    batch: Sequence[Sequence[dict[str, list[int]]]],
    *,
    pad_id: int,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """`padded_collate` of every sample of every group: the collate function of token-budget
    batches (`TokenBudgetSampler`), where one DataLoader item is a whole batch of samples."""
    samples = [example for group in batch for example in group]
    return padded_collate(samples, pad_id=pad_id, ignore_index=ignore_index)


def packed_collate(
    batch: Sequence[Sequence[dict[str, list[int]]]],
    *,
    max_seq_len: int,
    pad_id: int,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Lay each pack's documents end to end in one row of `max_seq_len` tokens.

    Returns (B, max_seq_len) int64 tensors:

    - `tokens`, `labels`: the documents one after the other, then `pad_id` / `ignore_index`.
    - `position_ids`: restart at 0 with every document, as if each were alone.
    - `document_ids`: 0, 1, 2, ... per document of the row, -1 on padding; the model attends
      only within one document (`Transformer.forward(document_ids=...)`).

    The label of each document's first token is `ignore_index`: the loss predicts `labels[t+1]`
    from position t, so this keeps the last token of a document from being trained to predict
    the first token of the next one. A lone document never has its first token as a target
    either, so the packed loss reads exactly the tokens the unpacked one reads.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    shape = (len(batch), max_seq_len)
    tokens = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, ignore_index, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    document_ids = torch.full(shape, -1, dtype=torch.long)
    for row, pack in enumerate(batch):
        start = 0
        for document, example in enumerate(pack):
            n = len(example["tokens"])
            end = start + n
            if end > max_seq_len:
                raise ValueError(f"pack {row} holds more than max_seq_len={max_seq_len} tokens")
            tokens[row, start:end] = torch.tensor(example["tokens"], dtype=torch.long)
            labels[row, start:end] = torch.tensor(example["labels"], dtype=torch.long)
            labels[row, start] = ignore_index
            position_ids[row, start:end] = torch.arange(n)
            document_ids[row, start:end] = document
            start = end
    return {
        "tokens": tokens,
        "labels": labels,
        "position_ids": position_ids,
        "document_ids": document_ids,
    }
