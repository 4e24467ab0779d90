"""What every tokenized dataset shares: (tokens, labels) examples, truncated, with dead ones dropped."""

from __future__ import annotations

from torch.utils.data import Dataset

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.errors import DataError

__all__ = ["TokenizedExamples"]


class TokenizedExamples(Dataset):
    """Item i is `{"tokens": [...], "labels": [...]}` (labels unshifted, -100 = no loss).

    Subclasses tokenize their records eagerly and `add()` each one. An example whose loss tokens
    were all truncated away would train nothing, so it is dropped and counted in `num_dropped`.
    """

    def __init__(self, max_seq_len: int) -> None:
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        self.max_seq_len = max_seq_len
        self.examples: list[tuple[list[int], list[int]]] = []
        self.num_dropped = 0

    def add(self, tokens: list[int], labels: list[int]) -> None:
        """Keep the example (truncated to max_seq_len) unless no token of it carries loss."""
        tokens, labels = tokens[: self.max_seq_len], labels[: self.max_seq_len]
        # labels[0] is never a target once the loss shifts, so it cannot keep a record alive.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            self.num_dropped += 1
            return
        self.examples.append((tokens, labels))

    def require_examples(self, source: str, what: str) -> None:
        """Raise DataError if every record of `source` was dropped (`what`: where loss starts)."""
        if not self.examples:
            raise DataError(
                f"data file '{source}': all {self.num_dropped} records are longer than "
                f"max_seq_len={self.max_seq_len} before {what}"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens, labels = self.examples[index]
        return {"tokens": tokens, "labels": labels}
