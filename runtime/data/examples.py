"""What every tokenized dataset shares: (tokens, labels) examples, truncated, with dead ones dropped.

Besides the examples, a dataset keeps what `tunegen data` reports about them: the source line of
each example, its length before truncation, and each dropped record with its line and the reason.
"""

from __future__ import annotations

from typing import NamedTuple

from torch.utils.data import Dataset

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.jsonl import RecordErrors, located_list
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
    item, the records dropped (with line and reason), the bad records found while reading
    (`errors`, all reported at the end), and the errors when nothing, or too much, is dropped.

    A record that trains nothing is dropped, up to `max_dropped_fraction` of the records; more
    than that is an error listing them, as it usually means a wrong template, field or
    `max_seq_len` rather than a few odd records.
    """

    def __init__(self, max_seq_len: int, *, max_dropped_fraction: float = 0.01) -> None:
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        if not 0 <= max_dropped_fraction <= 1:
            raise ValueError(
                f"max_dropped_fraction must be between 0 and 1, got {max_dropped_fraction}"
            )
        self.max_seq_len = max_seq_len
        self.max_dropped_fraction = max_dropped_fraction
        self.lines: list[int | None] = []  # source line of each kept item
        self.dropped: list[DroppedRecord] = []
        self.errors = RecordErrors()

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def finish(self, source: str, what: str) -> None:
        """Raise what reading `source` found: every bad record, then no examples left, then too
        many dropped (`what`: where the loss starts, for the all-too-long message)."""
        self.errors.raise_if_any()
        self.require_examples(source, what)
        self._check_dropped(source)

    def require_examples(self, source: str, what: str) -> None:
        """Raise DataError if every record of `source` was dropped (`what`: where loss starts)."""
        if len(self) > 0:
            return
        if all("max_seq_len" in record.reason for record in self.dropped):
            raise DataError(
                f"data file '{source}': all {self.num_dropped} records are longer than "
                f"max_seq_len={self.max_seq_len} before {what}"
            )
        raise DataError(
            f"data file '{source}': all {self.num_dropped} records train nothing:\n"
            + self._dropped_lines(source)
        )

    def _check_dropped(self, source: str) -> None:
        records = len(self) + self.num_dropped
        if self.num_dropped <= self.max_dropped_fraction * records:
            return
        raise DataError(
            f"data file '{source}': {self.num_dropped:,} of {records:,} records "
            f"({self.num_dropped / records:.1%}) train nothing and would be dropped, more than "
            f"max_dropped_fraction={self.max_dropped_fraction:g} allows (raise "
            "dataset.max_dropped_fraction to accept it):\n" + self._dropped_lines(source)
        )

    def _dropped_lines(self, source: str) -> str:
        return located_list(
            [f"{source}:{line if line is not None else '?'}: {why}" for line, why in self.dropped]
        )


class TokenizedExamples(TruncatedRecords):
    """Item i is `{"tokens": [...], "labels": [...]}` (labels unshifted, -100 = no loss).

    Subclasses tokenize their records eagerly and `add()` each one. An example whose loss tokens
    were all truncated away would train nothing, so it is dropped and listed in `dropped`.
    """

    def __init__(self, max_seq_len: int, *, max_dropped_fraction: float = 0.01) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
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
