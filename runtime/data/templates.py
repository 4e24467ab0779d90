"""Prompt templates: how an instruction record becomes the text the model reads.

A template is data, not code: two format strings, one for records with an `input` and one for
records without. Both end right where the response begins, so the prompt and the response can be
tokenized separately and the loss mask falls exactly on the response (see `instruct.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ALPACA", "PLAIN", "PROMPT_TEMPLATES", "PromptTemplate"]


@dataclass(frozen=True)
class PromptTemplate:
    """Two format strings with `{instruction}` (and `{input}`) placeholders.

    `with_input` is used when the record's `input` is a non-empty string, `without_input`
    otherwise (a missing, null or empty `input`), the same rule as the original Alpaca code.
    """

    name: str
    with_input: str
    without_input: str

    def prompt(self, instruction: str, input: str = "") -> str:
        """The prompt text for one instruction (and optional input); ends where the response starts."""
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)

    def format(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """Split a record into `(prompt_text, response_text)`; the response is `output` verbatim."""
        return self.prompt(record["instruction"], record.get("input") or ""), record["output"]


ALPACA = PromptTemplate(
    name="alpaca",
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)

# No boilerplate: for users who want every token of the context spent on their own data.
PLAIN = PromptTemplate(
    name="plain",
    with_input="{instruction}\n{input}\n",
    without_input="{instruction}\n",
)

PROMPT_TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (ALPACA, PLAIN)}
