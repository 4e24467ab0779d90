"""Chat data: conversations -> token ids with the loss on the assistant replies only.

A record holds one conversation, in either of two common forms:

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}   (OpenAI)
    {"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}   (ShareGPT)

A chat template (`chat_templates.py`) renders it as text split into segments that do or do not
carry the loss. The text is tokenized as one string, as `apply_chat_template` tokenizes it, so the
ids are the ones the model sees at inference; where a segment boundary falls in the ids is found
by tokenizing the text before it. Labels are unshifted, as in `InstructDataset`:

    tokens = the whole rendering (BOS, if any, is part of it)     (then truncated to max_seq_len)
    labels = token ids for each assistant reply and its end-of-turn token, -100 elsewhere
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunegen.runtime.data.chat_templates import (
    CHAT_TEMPLATE_NAMES,
    CHAT_TEMPLATES,
    NO_CHAT_TEMPLATE,
    TOKENIZER_TEMPLATE,
    Message,
    Segment,
    chat_segments,
    generation_prompt,
)
from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.examples import DroppedRecord, TokenizedExamples
from tunegen.runtime.data.jsonl import RecordErrors, json_type_name, read_numbered_records
from tunegen.runtime.errors import DataError, TokenizerError
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = [
    "ChatDataset",
    "chat_prompt_tokens",
    "chat_template_args",
    "check_chat_tokenizer",
    "parse_turns",
    "read_chat_examples",
    "read_conversations",
    "tokenize_segments",
]

# The list field of each record form -> (role key, content key, its role names -> OpenAI roles).
_FORMS = {
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "conversations": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}


def read_conversations(
    source: str | Path, *, errors: RecordErrors | None = None
) -> list[tuple[int, list[Message]]]:
    """(line, messages) for every good record of `source`, in the OpenAI form.

    Bad records go to `errors`; without it, all of them are raised together at the end.
    """
    name = os.fspath(source)
    own = errors is None
    errors = RecordErrors() if errors is None else errors
    conversations = []
    for line, record in read_numbered_records(source, errors=errors):
        try:
            conversations.append((line, _messages(record, name, line)))
        except DataError as e:
            errors.add(line, e)
    if own:
        errors.raise_if_any()
    return conversations


def read_chat_examples(source: str | Path) -> list[tuple[list[Message], str]]:
    """(messages before the last assistant reply, that reply) per record, for evaluation."""
    errors = RecordErrors()
    name = os.fspath(source)
    examples = []
    for line, messages in read_conversations(source, errors=errors):
        if not _has_reply(messages):
            errors.add(line, DataError(f"{name}:{line}: {_NO_REPLY}"))
            continue
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        examples.append((messages[:last], messages[last]["content"]))
    errors.raise_if_any()
    return examples


_NO_REPLY = "the conversation has no assistant message, so nothing to learn"


def _has_reply(messages: Sequence[Message]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def chat_prompt_tokens(
    tokenizer: Tokenizer, messages: Sequence[Message], *, template: str
) -> list[int]:
    """Ids that ask the model for the next assistant reply, tokenized as in training."""
    check_chat_tokenizer(tokenizer, template)
    text = generation_prompt(messages, template, **chat_template_args(tokenizer, template))
    return tokenizer.encode(text, add_bos=False, add_eos=False)


class ChatDataset(TokenizedExamples):
    """Tokenized conversations; item i is `{"tokens": [...], "labels": [...]}`.

    `template` is a built-in chat template (`llama3`, `chatml`, `mistral`, `alpaca`) or
    `tokenizer` for the tokenizer's own. Records with no assistant reply, or whose replies are all
    truncated away, would train nothing, so they are dropped and listed in `dropped` (up to
    `max_dropped_fraction` of them). Every bad record is reported, in one error.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        source: str | Path,
        template: str,
        max_seq_len: int,
        train_on_input: bool = False,
        max_dropped_fraction: float = 0.01,
    ) -> None:
        super().__init__(max_seq_len, max_dropped_fraction=max_dropped_fraction)
        check_chat_tokenizer(tokenizer, template)
        template_args = chat_template_args(tokenizer, template)
        name = os.fspath(source)
        for line, messages in read_conversations(source, errors=self.errors):
            if not train_on_input and not _has_reply(messages):
                self.dropped.append(DroppedRecord(line, _NO_REPLY))
                continue
            try:
                segments = chat_segments(messages, template, **template_args)
            except DataError as e:
                self.errors.add(line, DataError(f"{name}:{line}: {e}"))
                continue
            if train_on_input:
                segments = [Segment(s.text, True) for s in segments]
            self.add(*tokenize_segments(tokenizer, segments), line=line)
        self.finish(name, "their first assistant reply")


# -- records -------------------------------------------------------------------------------------


def _messages(record: Mapping[str, Any], name: str, line: int) -> list[Message]:
    """The conversation of `record` in the OpenAI form; every problem names `name:line`."""

    def fail(message: str) -> DataError:
        return DataError(f"{name}:{line}: {message}")

    fields = [field for field in _FORMS if field in record]
    if len(fields) != 1:
        found = "both" if fields else "neither"
        raise fail(f"a chat record needs a 'messages' or a 'conversations' field, found {found}")
    field = fields[0]
    turns = record[field]
    if not isinstance(turns, list):
        raise fail(f"field '{field}' must be an array, got {json_type_name(turns)}")
    if not turns:
        raise fail(f"empty conversation ('{field}' has no messages)")
    return parse_turns(turns, form=field, fail=fail)


def parse_turns(
    turns: list[Any], *, form: str, fail: Callable[[str], DataError], where: str = ""
) -> list[Message]:
    """`turns` (a JSON array) checked message by message and read as OpenAI-form messages.

    `form` is the record field the array came from, `messages` (role/content) or
    `conversations` (ShareGPT's from/value); `where` prefixes each problem ("field 'x': ").
    """
    role_key, content_key, roles = _FORMS[form]
    messages = []
    for number, turn in enumerate(turns, start=1):
        at = f"{where}message {number}"
        if not isinstance(turn, dict):
            raise fail(f"{at} must be an object, got {json_type_name(turn)}")
        for key in (role_key, content_key):
            if key not in turn:
                raise fail(f"{at} has no '{key}'")
        role, content = turn[role_key], turn[content_key]
        if not isinstance(role, str) or role not in roles:
            raise fail(f"{at}: unknown role {role!r} (known: {', '.join(roles)})")
        if not isinstance(content, str):
            raise fail(f"{at}: '{content_key}' must be a string, got {json_type_name(content)}")
        messages.append(Message(role=roles[role], content=content))
    return messages


# -- tokenizer -----------------------------------------------------------------------------------


def chat_template_args(tokenizer: Tokenizer, template: str) -> dict[str, Any]:
    """The keyword arguments `chat_segments` and `generation_prompt` need from the tokenizer.

    The BOS and EOS tokens as text, plus the tokenizer's own Jinja template for the `tokenizer`
    template; chat and preference data and generation prompts all render with these, so they
    render a conversation the same way.
    """
    args = {
        "bos_token": _token_text(tokenizer, tokenizer.bos_id),
        "eos_token": _token_text(tokenizer, tokenizer.eos_id),
    }
    if template == TOKENIZER_TEMPLATE:
        args["chat_template"] = tokenizer.chat_template
    return args


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.decode([token_id], skip_special_tokens=False)


def check_chat_tokenizer(tokenizer: Tokenizer, template: str) -> None:
    """Fail early where a built-in template's special tokens would be read as plain text.

    Raises ValueError for an unknown template and TokenizerError where `tokenizer` would not read
    a special token the template writes back as its one id, which would silently train the model
    on the wrong ids.
    """
    if template == TOKENIZER_TEMPLATE:
        if tokenizer.chat_template is None:
            raise TokenizerError(NO_CHAT_TEMPLATE)
        return
    if template not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {template!r} (known: {list(CHAT_TEMPLATE_NAMES)})")
    fmt = CHAT_TEMPLATES[template]
    for text in fmt.special_tokens:
        token_id = tokenizer.token_to_id(text)
        if token_id is None or tokenizer.encode(text, add_bos=False, add_eos=False) != [token_id]:
            raise TokenizerError(
                f"chat template '{template}' needs the special token {text!r}, which the "
                f"tokenizer does not have; use template: {TOKENIZER_TEMPLATE} or another template"
            )
    strings = fmt.begin + "".join(header + end for header, end in fmt.turns.values())
    specials = [("{eos}", "EOS", tokenizer.eos_id), ("{bos}", "BOS", tokenizer.bos_id)]
    for placeholder, what, token_id in specials:
        if placeholder not in strings or token_id is None:
            continue
        text = _token_text(tokenizer, token_id)
        if tokenizer.encode(text, add_bos=False, add_eos=False) != [token_id]:
            raise TokenizerError(
                f"chat template '{template}' writes the tokenizer's {what} token as text, but "
                f"the tokenizer does not read {text!r} back as its {what} id"
            )


def tokenize_segments(
    tokenizer: Tokenizer, segments: Sequence[Segment]
) -> tuple[list[int], list[int]]:
    """(tokens, labels) of the segments, tokenized together as one text.

    One text, as `apply_chat_template` tokenizes it, so the ids are the ones the model sees at
    inference; labels copy the ids of segments that carry the loss and are -100 elsewhere.
    """
    segments = _merged(segments)
    tokens = tokenizer.encode("".join(s.text for s in segments), add_bos=False, add_eos=False)
    labels: list[int] = []
    for segment, count in zip(segments, _token_counts(tokenizer, segments, tokens), strict=True):
        start = len(labels)
        labels += tokens[start : start + count] if segment.carries_loss else [IGNORE_INDEX] * count
    if tokens and tokens[0] == tokenizer.bos_id:
        labels[0] = IGNORE_INDEX  # BOS is given, never predicted
    return tokens, labels


def _merged(segments: Sequence[Segment]) -> list[Segment]:
    """Join neighbours that agree on the loss and drop empty ones: fewer boundaries to place."""
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].carries_loss == segment.carries_loss:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.carries_loss)
        else:
            merged.append(segment)
    return merged


def _token_counts(
    tokenizer: Tokenizer, segments: Sequence[Segment], tokens: list[int]
) -> list[int]:
    """How many of `tokens`, the ids of all the segments' text, each segment covers.

    Usually each segment tokenizes on its own to exactly its part of `tokens` (its boundaries are
    special tokens or places where the tokenizer splits anyway). Otherwise, as with tokenizers
    that read a leading space into a segment's first word, a boundary sits after the ids that the
    text before it shares with `tokens`; a token that straddles it goes to the later segment.
    """
    pieces = [tokenizer.encode(s.text, add_bos=False, add_eos=False) for s in segments]
    if [token for piece in pieces for token in piece] == tokens:
        return [len(piece) for piece in pieces]
    counts, text, done = [], "", 0
    for segment in segments[:-1]:
        text += segment.text
        prefix = tokenizer.encode(text, add_bos=False, add_eos=False)
        end = max(done, _common_prefix_len(prefix, tokens))
        counts.append(end - done)
        done = end
    return [*counts, len(tokens) - done]


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
