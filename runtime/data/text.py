"""Plain-text data: every token of every record carries loss (continued pre-training)."""

from __future__ import annotations

from pathlib import Path

from tunegen.runtime.data.examples import TokenizedExamples
from tunegen.runtime.data.jsonl import read_numbered_records, require_fields
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = ["TextDataset"]


class TextDataset(TokenizedExamples):
    """Records' `column` text as `BOS + tokens + EOS`, truncated to `max_seq_len` (start kept).

    Labels equal the tokens (unshifted, Hugging Face convention: the loss shifts them).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        source: str | Path,
        max_seq_len: int,
        column: str = "text",
        max_dropped_fraction: float = 0.01,
    ) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
        for line, record in read_numbered_records(source, errors=self.errors):
            try:
                require_fields(record, [column], path=source, line=line)
            except DataError as e:
                self.errors.add(line, e)
                continue
            tokens = tokenizer.encode(record[column])
            self.add(tokens, list(tokens), line=line)
        self.finish(str(source), "their second token")
