"""What a tokenized dataset holds, in numbers: lengths, loss share, truncation, padding waste.

`tunegen data` prints these for the dataset a recipe builds (the same object, built by the same
code), so the numbers describe exactly what training will see. They are computed from the items
the dataset yields (`{"tokens", "labels"}`), plus, where the dataset records them
(`TokenizedExamples`), the lengths before truncation and the records it dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.examples import DroppedRecord
from tunegen.runtime.data.packing import best_fit_decreasing

__all__ = ["DatasetStats", "dataset_stats", "item_sequences"]

# How many dropped records are listed by line (all are counted).
_DROPPED_LISTED = 5


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of a tokenized dataset; shares are fractions in [0, 1].

    Padding is measured as the recipe batches: `batch_size` samples per batch, each batch padded
    to its longest sample, here in dataset order (the recipe shuffles; the expected waste is
    about the same). `packed_*` describe `data.packed: true`: samples packed best-fit-decreasing
    into sequences of `max_seq_len` tokens, as training packs them (see `packing.py`).
    """

    samples: int
    dropped: int
    dropped_records: list[dict[str, Any]]  # the first few: {"line": int | None, "reason": str}
    tokens: int
    length_min: int
    length_median: float
    length_p95: float
    length_max: int
    loss_tokens: int
    loss_share: float
    max_seq_len: int | None
    truncated_samples: int | None  # None when the dataset does not record untruncated lengths
    truncated_tokens: int | None
    batch_size: int
    batches: int
    padding_share: float
    packs: int | None  # None without max_seq_len, and for preference pairs
    packed_padding_share: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_sequences(item: dict[str, list[int]]) -> dict[str, tuple[list[int], list[int]]]:
    """The token sequences of one dataset item, by name: `""` for a plain `{"tokens", "labels"}`
    item, `"chosen"` and `"rejected"` for a preference pair, `"prompt"` for a GRPO prompt."""
    if "tokens" in item:
        return {"": (item["tokens"], item["labels"])}
    if "prompt_ids" in item:  # a GRPO prompt: the loss falls on completions sampled in training
        return {"prompt": (item["prompt_ids"], [-100] * len(item["prompt_ids"]))}
    return {
        side: (item[f"{side}_tokens"], item[f"{side}_labels"]) for side in ("chosen", "rejected")
    }


def dataset_stats(dataset: Dataset, *, batch_size: int) -> DatasetStats:
    """Count what `dataset` yields; see `DatasetStats` for what each number means.

    A preference pair counts as one sample of two sequences; a batch of B pairs is 2B rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths, loss_tokens, rows_per_item = [], 0, 1
    for index in range(len(dataset)):
        sequences = item_sequences(dataset[index])
        rows_per_item = len(sequences)
        for tokens, labels in sequences.values():
            lengths.append(len(tokens))
            loss_tokens += sum(1 for label in labels if label != IGNORE_INDEX)
    if not lengths:
        raise ValueError("the dataset has no samples")
    max_seq_len = getattr(dataset, "max_seq_len", None)
    dropped: list[DroppedRecord] = list(getattr(dataset, "dropped", []))
    untruncated = getattr(dataset, "untruncated_lengths", None)
    truncated_samples = truncated_tokens = None
    if untruncated is not None and max_seq_len is not None:
        truncated_samples = sum(1 for n in untruncated if n > max_seq_len)
        truncated_tokens = sum(n - max_seq_len for n in untruncated if n > max_seq_len)
    packs = packed_share = None
    if max_seq_len is not None and rows_per_item == 1:  # preference rows are never packed
        packs = len(best_fit_decreasing(lengths, max_seq_len))
        packed_share = _waste(sum(lengths), packs * max_seq_len)
    batches = _batches(lengths, batch_size * rows_per_item)
    return DatasetStats(
        samples=len(dataset),
        dropped=len(dropped),
        dropped_records=[d._asdict() for d in dropped[:_DROPPED_LISTED]],
        tokens=sum(lengths),
        length_min=min(lengths),
        length_median=float(np.median(lengths)),
        length_p95=float(np.percentile(lengths, 95)),
        length_max=max(lengths),
        loss_tokens=loss_tokens,
        loss_share=loss_tokens / sum(lengths),
        max_seq_len=max_seq_len,
        truncated_samples=truncated_samples,
        truncated_tokens=truncated_tokens,
        batch_size=batch_size,
        batches=len(batches),
        padding_share=_waste(sum(lengths), sum(len(b) * max(b) for b in batches)),
        packs=packs,
        packed_padding_share=packed_share,
    )


def _batches(lengths: Sequence[int], batch_size: int) -> list[Sequence[int]]:
    return [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]


def _waste(real_tokens: int, computed_tokens: int) -> float:
    """Share of the computed positions that hold padding."""
    return (computed_tokens - real_tokens) / computed_tokens
