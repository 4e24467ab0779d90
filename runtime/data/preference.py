"""Preference data for DPO: one prompt, a chosen and a rejected response, each as token ids.

DPO compares how likely the model finds the chosen and the rejected response to the same prompt,
so a record becomes two examples that share their prompt tokens and differ in the response. A
record takes one of three forms (the ones Hugging Face preference sets and TRL use):

    {"prompt": str, "chosen": str, "rejected": str}                                  plain
    {"chosen": [messages], "rejected": [messages]}         two conversations sharing all but
                                                           their last (assistant) message
    {"prompt": [messages], "chosen": [messages] | str, "rejected": [messages] | str}  TRL's chat

Messages are `{"role": "system" | "user" | "assistant", "content": str}`; a chat `chosen` or
`rejected` holds one assistant message (a string is short for it).

How a record becomes text depends on `template`, the same option as for instruct and chat data:

* a plain record with an instruct prompt template (`alpaca`, `plain`; see `templates.py`) is
  tokenized exactly as `InstructDataset` tokenizes `{"instruction": prompt, "output": response}`;
* any other record, or a plain one with a chat template (`llama3`, `chatml`, `mistral`,
  `tokenizer`), is a conversation (the plain prompt becomes one user message) rendered and
  tokenized exactly as `ChatDataset` does it, by the same code.

Only the response carries the loss (for chat: the final assistant reply and its end-of-turn
token; earlier replies are context). There is no `train_on_input`: DPO compares the two responses
to one prompt, so the prompt's log-probability would cancel out of the loss anyway.

Item i is `{"chosen_tokens", "chosen_labels", "rejected_tokens", "rejected_labels"}` (labels
unshifted, -100 where no loss), each truncated to `max_seq_len`. A pair in which either response
is truncated away entirely would train nothing, so it is dropped and listed in `dropped` (as
`TokenizedExamples` does; `lines` holds the source line of each kept pair).
`preference_collate` stacks a batch of B pairs into 2B rows: chosen first, then rejected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunegen.runtime.data.chat import (
    chat_template_args,
    check_chat_tokenizer,
    parse_turns,
    tokenize_segments,
)
from tunegen.runtime.data.chat_templates import (
    CHAT_TEMPLATE_NAMES,
    Message,
    Segment,
    chat_segments,
)
from tunegen.runtime.data.collate import IGNORE_INDEX, padded_collate
from tunegen.runtime.data.examples import DroppedRecord, TruncatedRecords, carries_loss
from tunegen.runtime.data.jsonl import json_type_name, read_numbered_records, require_fields
from tunegen.runtime.data.templates import PROMPT_TEMPLATES
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = ["PreferenceDataset", "preference_collate"]

Example = tuple[list[int], list[int]]  # (tokens, labels)
Prompt = str | list[Message]  # a plain prompt, or the messages before the response
Fail = Callable[[str], DataError]

_KEYS = ("chosen_tokens", "chosen_labels", "rejected_tokens", "rejected_labels")


class PreferenceDataset(TruncatedRecords):
    """Tokenized preference pairs; item i is `{"chosen_tokens", "chosen_labels", ...}`.

    `template` is an instruct prompt template (`alpaca`, `plain`), a built-in chat template
    (`llama3`, `chatml`, `mistral`, `alpaca`) or `tokenizer`; see the module docstring for which
    applies to which record. Pairs with a response truncated away are listed in `dropped`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        source: str | Path,
        template: str = "alpaca",
        max_seq_len: int,
        max_dropped_fraction: float = 0.01,
    ) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
        self.pairs: list[tuple[Example, Example]] = []
        encode = _PairEncoder(tokenizer, template)
        name = os.fspath(source)
        for line, record in read_numbered_records(source, errors=self.errors):
            try:
                prompt, chosen, rejected = _parse(record, name, line)
            except DataError as e:
                self.errors.add(line, e)
                continue
            try:
                pair = encode(prompt, chosen, rejected)
            except DataError as e:
                self.errors.add(line, DataError(f"{name}:{line}: {e}"))
                continue
            self._add(*pair, line=line)
        self.finish(name, "their responses start")

    def _add(self, chosen: Example, rejected: Example, *, line: int) -> None:
        """Keep the pair (truncated) unless a response has no loss token left."""
        lengths = len(chosen[0]), len(rejected[0])
        chosen, rejected = self._truncated(chosen), self._truncated(rejected)
        if not (carries_loss(chosen[1]) and carries_loss(rejected[1])):
            reason = "a response has no token that carries loss"
            if max(lengths) > self.max_seq_len:
                reason += (
                    f" within max_seq_len={self.max_seq_len} "
                    f"(chosen {lengths[0]} tokens, rejected {lengths[1]})"
                )
            self.dropped.append(DroppedRecord(line, reason))
            return
        self.pairs.append((chosen, rejected))
        self.lines.append(line)

    def _truncated(self, example: Example) -> Example:
        tokens, labels = example
        return tokens[: self.max_seq_len], labels[: self.max_seq_len]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        (chosen_tokens, chosen_labels), (rejected_tokens, rejected_labels) = self.pairs[index]
        values = (chosen_tokens, chosen_labels, rejected_tokens, rejected_labels)
        return dict(zip(_KEYS, values, strict=True))


def preference_collate(
    batch: Sequence[Mapping[str, list[int]]], *, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, torch.Tensor]:
    """Stack B pairs into `{"tokens": (2B, T), "labels": (2B, T)}`, right-padded as one batch.

    Rows 0..B-1 are the chosen responses and rows B..2B-1 the rejected ones, in batch order, so
    one forward pass scores both and `DPOLoss` splits them in halves. Padding follows
    `padded_collate` (to the longest of all 2B rows).
    """
    rows = [
        {"tokens": pair[f"{side}_tokens"], "labels": pair[f"{side}_labels"]}
        for side in ("chosen", "rejected")
        for pair in batch
    ]
    return padded_collate(rows, pad_id=pad_id, ignore_index=ignore_index)


# -- text to ids ---------------------------------------------------------------------------------


class _PairEncoder:
    """(prompt, chosen, rejected) -> the two examples, by the instruct or the chat code path.

    A chat template's tokenizer checks run on first use, so that plain records with the `alpaca`
    prompt template work with tokenizers that could not render the `alpaca` chat template.
    """

    def __init__(self, tokenizer: Tokenizer, template: str) -> None:
        if template not in PROMPT_TEMPLATES and template not in CHAT_TEMPLATE_NAMES:
            known = sorted({*PROMPT_TEMPLATES, *CHAT_TEMPLATE_NAMES})
            raise ValueError(f"unknown template {template!r} for preference data (known: {known})")
        self.tokenizer = tokenizer
        self.template = template
        self._chat_args: dict[str, Any] | None = None

    def __call__(self, prompt: Prompt, chosen: str, rejected: str) -> tuple[Example, Example]:
        if isinstance(prompt, str) and self.template in PROMPT_TEMPLATES:
            return self._instruct(prompt, chosen, rejected)
        if isinstance(prompt, str):
            prompt = [Message(role="user", content=prompt)]
        return self._chat(prompt, chosen), self._chat(prompt, rejected)

    def _instruct(self, prompt: str, chosen: str, rejected: str) -> tuple[Example, Example]:
        """As `InstructDataset`: prompt and response tokenized apart, BOS + prompt + resp + EOS."""
        text = PROMPT_TEMPLATES[self.template].prompt(prompt)
        prompt_ids = self.tokenizer.encode(text, add_bos=True, add_eos=False)
        masked = [IGNORE_INDEX] * len(prompt_ids)
        examples = []
        for response in (chosen, rejected):
            ids = self.tokenizer.encode(response, add_bos=False, add_eos=True)
            examples.append((prompt_ids + ids, masked + ids))
        return examples[0], examples[1]

    def _chat(self, prompt: list[Message], response: str) -> Example:
        """As `ChatDataset`, with the loss on the final reply only."""
        if self.template not in CHAT_TEMPLATE_NAMES:
            raise DataError(
                f"chat records need a chat template ({', '.join(CHAT_TEMPLATE_NAMES)}), "
                f"not the prompt template '{self.template}'"
            )
        if self._chat_args is None:
            check_chat_tokenizer(self.tokenizer, self.template)
            self._chat_args = chat_template_args(self.tokenizer, self.template)
        messages = [*prompt, Message(role="assistant", content=response)]
        segments = chat_segments(messages, self.template, **self._chat_args)
        return tokenize_segments(self.tokenizer, _final_reply_only(segments))


def _final_reply_only(segments: Sequence[Segment]) -> list[Segment]:
    """The segments with the loss kept on the last one that carries it (the response)."""
    last = max(i for i, segment in enumerate(segments) if segment.carries_loss)
    return [Segment(segment.text, i == last) for i, segment in enumerate(segments)]


# -- records -------------------------------------------------------------------------------------


def _parse(record: Mapping[str, Any], name: str, line: int) -> tuple[Prompt, str, str]:
    """(prompt, chosen response, rejected response) of a record of any form, after checking it."""

    def fail(message: str) -> DataError:
        return DataError(f"{name}:{line}: {message}")

    for field in ("chosen", "rejected"):
        if field not in record:
            raise fail(f"missing field '{field}'")
    if "prompt" not in record and isinstance(record["chosen"], list):
        return _shared_turns(record, fail)
    if "prompt" not in record:
        raise fail("missing field 'prompt'")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        require_fields(record, ("prompt", "chosen", "rejected"), path=name, line=line)
        return prompt, record["chosen"], record["rejected"]
    if isinstance(prompt, list):
        messages = _messages(prompt, "prompt", fail)
        return messages, _response(record, "chosen", fail), _response(record, "rejected", fail)
    raise fail(
        f"field 'prompt' must be a string or an array of messages, got {json_type_name(prompt)}"
    )


def _shared_turns(record: Mapping[str, Any], fail: Fail) -> tuple[Prompt, str, str]:
    """Split two conversations that differ only in their last message (Anthropic HH's form)."""
    chosen = _messages(record["chosen"], "chosen", fail)
    rejected = _messages(record["rejected"], "rejected", fail)
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise fail(f"field '{field}' must end with an assistant message (the response)")
    if chosen[:-1] != rejected[:-1]:
        raise fail("fields 'chosen' and 'rejected' must share every message but the last")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _response(record: Mapping[str, Any], field: str, fail: Fail) -> str:
    """The reply in `record[field]`: a string, or an array of one assistant message."""
    value = record[field]
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise fail(
            f"field '{field}' must be a string or an array of messages, got {json_type_name(value)}"
        )
    messages = _messages(value, field, fail)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise fail(f"field '{field}' must hold exactly one message, from the assistant")
    return messages[0]["content"]


def _messages(value: Any, field: str, fail: Fail) -> list[Message]:
    """`value` checked as a non-empty array of `{"role", "content"}` messages."""
    if not isinstance(value, list):
        raise fail(f"field '{field}' must be an array of messages, got {json_type_name(value)}")
    if not value:
        raise fail(f"field '{field}' has no messages")
    return parse_turns(value, form="messages", fail=fail, where=f"field '{field}': ")
