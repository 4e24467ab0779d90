"""Instruction data: Alpaca-style records -> token ids with a loss mask on the prompt.

A record is `{"instruction": ..., "input": ... (optional), "output": ...}`. Its prompt (from a
template in `templates.py`) and its response (`output`) are tokenized separately, so the boundary
between "read this" and "learn to write this" is exact whatever the tokenizer does to the text:

    tokens = BOS + prompt ids + response ids + EOS           (then truncated to max_seq_len)
    labels = -100 for BOS and the prompt, token ids for the response and EOS

Labels are not shifted (the Hugging Face convention): the loss compares the logits at position
t with labels[t + 1]. Everything is tokenized when the dataset is built, so a bad record stops the
run before the first training step.
"""

from __future__ import annotations

from pathlib import Path

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.examples import TokenizedExamples
from tunegen.runtime.data.jsonl import RecordErrors, read_numbered_records, require_fields
from tunegen.runtime.data.templates import PROMPT_TEMPLATES, PromptTemplate
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = ["InstructDataset", "read_instruct_examples"]

_REQUIRED = ("instruction", "output")
_OPTIONAL = ("input",)


def _template(name: str) -> PromptTemplate:
    if name not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r} (known: {sorted(PROMPT_TEMPLATES)})")
    return PROMPT_TEMPLATES[name]


def _formatted(
    source: str | Path, template: str, errors: RecordErrors
) -> list[tuple[int, str, str]]:
    """(line, prompt, response) for every good record of `source`; bad ones go to `errors`."""
    fmt = _template(template)
    formatted = []
    for line, record in read_numbered_records(source, errors=errors):
        try:
            require_fields(record, _REQUIRED, path=source, line=line, optional=_OPTIONAL)
        except DataError as e:
            errors.add(line, e)
            continue
        formatted.append((line, *fmt.format(record)))
    return formatted


def read_instruct_examples(
    source: str | Path, *, template: str = "alpaca"
) -> list[tuple[str, str]]:
    """(prompt_text, expected_response) pairs, for evaluation by generation."""
    errors = RecordErrors()
    examples = _formatted(source, template, errors)
    errors.raise_if_any()
    return [(prompt, response) for _, prompt, response in examples]


class InstructDataset(TokenizedExamples):
    """Tokenized instruction records; item i is `{"tokens": [...], "labels": [...]}`.

    Records whose response is truncated away entirely (a prompt longer than `max_seq_len`) would
    train nothing, so they are dropped and listed in `dropped` (up to `max_dropped_fraction` of
    them). Every bad record is reported, in one error.
    """

    def __init__(
        self,
        tokenizer: SentencePieceTokenizer,
        *,
        source: str | Path,
        template: str = "alpaca",
        max_seq_len: int,
        train_on_input: bool = False,
        max_dropped_fraction: float = 0.01,
    ) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
        for line, prompt, response in _formatted(source, template, self.errors):
            prompt_ids = tokenizer.encode(prompt, add_bos=True, add_eos=False)
            response_ids = tokenizer.encode(response, add_bos=False, add_eos=True)
            prompt_labels = prompt_ids if train_on_input else [IGNORE_INDEX] * len(prompt_ids)
            self.add(prompt_ids + response_ids, prompt_labels + response_ids, line=line)
        self.finish(str(source), "their response starts")
