"""What every tokenized dataset shares: (tokens, labels) examples, truncated, with dead ones dropped.

Besides the examples, a dataset keeps what `tunegen data` reports about them: the source line of
each example, its length before truncation, and each dropped record with its line and the reason.
"""

from __future__ import annotations

from typing import NamedTuple

from torch.utils.data import Dataset

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.errors import DataError

__all__ = ["DroppedRecord", "TokenizedExamples", "TruncatedRecords", "carries_loss"]


class DroppedRecord(NamedTuple):
    """A record that yields no example: the line where it starts (None if unknown) and why."""

    line: int | None
    reason: str


def carries_loss(labels: list[int]) -> bool:
    """Whether a (truncated) sequence still trains anything.

    labels[0] is never a target once the loss shifts, so it cannot keep a sequence alive.
    """
    return any(label != IGNORE_INDEX for label in labels[1:])


class TruncatedRecords(Dataset):
    """What datasets of records truncated to `max_seq_len` share: the source line of each kept
    item, the records dropped (with line and reason), and the error when nothing is left."""

    def __init__(self, max_seq_len: int) -> None:
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        self.max_seq_len = max_seq_len
        self.lines: list[int | None] = []  # source line of each kept item
        self.dropped: list[DroppedRecord] = []

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def require_examples(self, source: str, what: str) -> None:
        """Raise DataError if every record of `source` was dropped (`what`: where loss starts)."""
        if len(self) == 0:
            raise DataError(
                f"data file '{source}': all {self.num_dropped} records are longer than "
                f"max_seq_len={self.max_seq_len} before {what}"
            )


class TokenizedExamples(TruncatedRecords):
    """Item i is `{"tokens": [...], "labels": [...]}` (labels unshifted, -100 = no loss).

    Subclasses tokenize their records eagerly and `add()` each one. An example whose loss tokens
    were all truncated away would train nothing, so it is dropped and listed in `dropped`.
    """

    def __init__(self, max_seq_len: int) -> None:
        super().__init__(max_seq_len)
        self.examples: list[tuple[list[int], list[int]]] = []
        self.untruncated_lengths: list[int] = []  # each kept example's length before truncation

    def add(self, tokens: list[int], labels: list[int], *, line: int | None = None) -> None:
        """Keep the example (truncated to max_seq_len) unless no token of it carries loss."""
        length = len(tokens)
        tokens, labels = tokens[: self.max_seq_len], labels[: self.max_seq_len]
        if not carries_loss(labels):
            truncated = length > self.max_seq_len
            reason = (
                f"no token carries loss within max_seq_len={self.max_seq_len} ({length} tokens)"
                if truncated
                else "no token carries loss"
            )
            self.dropped.append(DroppedRecord(line, reason))
            return
        self.examples.append((tokens, labels))
        self.lines.append(line)
        self.untruncated_lengths.append(length)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens, labels = self.examples[index]
        return {"tokens": tokens, "labels": labels}
