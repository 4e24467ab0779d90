"""Plain-text data: every token of every record carries loss (continued pre-training)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from tunegen.runtime.data.jsonl import read_numbered_records, require_fields
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = ["TextDataset"]


class TextDataset(Dataset):
    """Records' `column` text as `BOS + tokens + EOS`, truncated to `max_seq_len` (start kept).

    Labels equal the tokens (unshifted, Hugging Face convention: the loss shifts them).
    """

    def __init__(
        self,
        tokenizer: SentencePieceTokenizer,
        *,
        source: str | Path,
        max_seq_len: int,
        column: str = "text",
    ) -> None:
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        self.examples: list[list[int]] = []
        for line, record in read_numbered_records(source):
            require_fields(record, [column], path=source, line=line)
            self.examples.append(tokenizer.encode(record[column])[:max_seq_len])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens = self.examples[index]
        return {"tokens": tokens, "labels": list(tokens)}
