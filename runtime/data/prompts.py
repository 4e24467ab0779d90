"""Prompt data for GRPO: prompts to sample completions for, with the fields the rewards read.

A record is a prompt in one of two forms, plus any other fields (an expected `answer`, a test
case, ...), which are not shown to the model but passed to every reward function:

    {"prompt": str, "input": str (optional), ...fields}     plain
    {"messages": [messages], ...fields}                     chat: the conversation so far

A plain prompt with an instruct template (`alpaca`, `plain`) is tokenized as `InstructDataset`
tokenizes an `{"instruction": prompt, "input": input}` record (BOS + template text, no EOS), so a
model trained by SFT on instruct data is asked the way it was taught. Chat messages, or a plain
prompt with a chat template, are rendered with the template's generation prompt, as
`ChatDataset` renders them. `input`, when present, is also a field the rewards receive.

Item i is `{"prompt_ids": [...], "prompt": the record's prompt (str or messages), "fields":
{name: value}}`. A prompt that leaves fewer than `max_new_tokens` positions free within
`max_seq_len` cannot be completed, so it is dropped and listed in `dropped` (up to
`max_dropped_fraction` of the records). `prompt_collate` turns a batch into lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunegen.runtime.data.chat import chat_prompt_tokens, parse_turns
from tunegen.runtime.data.chat_templates import CHAT_TEMPLATE_NAMES, Message
from tunegen.runtime.data.examples import DroppedRecord, TruncatedRecords
from tunegen.runtime.data.jsonl import json_type_name, read_numbered_records
from tunegen.runtime.data.templates import PROMPT_TEMPLATES
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = ["PromptDataset", "prompt_collate"]

Prompt = str | list[Message]
_PROMPT_KEYS = ("prompt", "messages")


class PromptDataset(TruncatedRecords):
    """Tokenized prompts; item i is `{"prompt_ids", "prompt", "fields"}` (see the module doc).

    `template` is an instruct prompt template (`alpaca`, `plain`), a built-in chat template
    (`llama3`, `chatml`, `mistral`, `alpaca`) or `tokenizer`. Every record's extra fields are
    kept; a field some records lack is None in those.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        source: str | Path,
        template: str = "alpaca",
        max_seq_len: int,
        max_new_tokens: int,
        max_dropped_fraction: float = 0.01,
    ) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
        if template not in PROMPT_TEMPLATES and template not in CHAT_TEMPLATE_NAMES:
            known = sorted({*PROMPT_TEMPLATES, *CHAT_TEMPLATE_NAMES})
            raise ValueError(f"unknown template {template!r} for prompt data (known: {known})")
        self.tokenizer, self.template = tokenizer, template
        self.max_new_tokens = max_new_tokens
        self.items: list[dict[str, Any]] = []
        name = os.fspath(source)
        for line, record in read_numbered_records(source, errors=self.errors):
            try:
                prompt = _prompt(record, name, line)
                ids = self._encode(prompt, record.get("input"))
            except DataError as e:
                self.errors.add(line, e if str(e).startswith(name) else _at(name, line, str(e)))
                continue
            fields = {k: v for k, v in record.items() if k not in _PROMPT_KEYS}
            self._add(ids, prompt, fields, line=line)
        self.finish(name, "there is room for grpo.max_new_tokens")
        names = sorted({k for item in self.items for k in item["fields"]})
        for item in self.items:  # the same field names in every item: rewards get full columns
            item["fields"] = {k: item["fields"].get(k) for k in names}

    @property
    def field_names(self) -> list[str]:
        """The extra fields the rewards receive as keyword arguments."""
        return list(self.items[0]["fields"]) if self.items else []

    def _encode(self, prompt: Prompt, input: Any) -> list[int]:
        """Token ids that ask the model for the completion of `prompt`."""
        if isinstance(prompt, str) and self.template in PROMPT_TEMPLATES:
            text = PROMPT_TEMPLATES[self.template].prompt(
                prompt, input if isinstance(input, str) else ""
            )
            return self.tokenizer.encode(text, add_bos=True, add_eos=False)
        if self.template not in CHAT_TEMPLATE_NAMES:
            raise DataError(
                f"chat records need a chat template ({', '.join(CHAT_TEMPLATE_NAMES)}), "
                f"not the prompt template '{self.template}'"
            )
        if isinstance(prompt, str):
            prompt = [Message(role="user", content=prompt)]
        return chat_prompt_tokens(self.tokenizer, prompt, template=self.template)

    def _add(self, ids: list[int], prompt: Prompt, fields: dict[str, Any], *, line: int) -> None:
        """Keep the prompt unless it leaves no room for `max_new_tokens` new tokens."""
        room = self.max_seq_len - self.max_new_tokens
        if len(ids) > room:
            self.dropped.append(
                DroppedRecord(
                    line,
                    f"the prompt's {len(ids)} tokens leave no room for max_new_tokens="
                    f"{self.max_new_tokens} within max_seq_len={self.max_seq_len}",
                )
            )
            return
        self.items.append({"prompt_ids": ids, "prompt": prompt, "fields": fields})
        self.lines.append(line)

    def require_examples(self, source: str, what: str) -> None:
        if len(self) == 0:
            raise DataError(
                f"data file '{source}': all {self.num_dropped} prompts are longer than "
                f"max_seq_len={self.max_seq_len} minus max_new_tokens={self.max_new_tokens}"
                if self.dropped
                else f"data file '{source}': no prompts"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def prompt_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch of prompt items as `{"prompt_ids": [[...]], "prompts": [...], "fields": {name:
    [value per prompt]}}`: prompts stay lists, the sampler pads them as it needs."""
    names = list(batch[0]["fields"]) if batch else []
    return {
        "prompt_ids": [list(item["prompt_ids"]) for item in batch],
        "prompts": [item["prompt"] for item in batch],
        "fields": {name: [item["fields"][name] for item in batch] for name in names},
    }


def _prompt(record: Mapping[str, Any], name: str, line: int) -> Prompt:
    """The record's prompt: its `prompt` string or its `messages`; problems name `name:line`."""
    found = [key for key in _PROMPT_KEYS if key in record]
    if len(found) != 1:
        which = "both" if found else "neither"
        raise _at(
            name, line, f"a prompt record needs a 'prompt' or a 'messages' field, found {which}"
        )
    value = record[found[0]]
    if found[0] == "prompt":
        if not isinstance(value, str):
            raise _at(name, line, f"field 'prompt' must be a string, got {json_type_name(value)}")
        return value
    if not isinstance(value, list) or not value:
        raise _at(name, line, "field 'messages' must be a non-empty array of messages")
    return parse_turns(value, form="messages", fail=lambda message: _at(name, line, message))


def _at(name: str, line: int, message: str) -> DataError:
    return DataError(f"{name}:{line}: {message}")
