"""Chat templates: how a conversation becomes the text a chat model reads, and which part it learns.

A conversation is a list of `{"role": "system" | "user" | "assistant", "content": str}` messages.
Rendering it gives `Segment`s, `(text, carries_loss)`, whose texts joined are the whole rendering:
an assistant message's content and the token that ends its turn (`<|eot_id|>`, `<|im_end|>`,
`</s>`) carry the loss, since ending the turn is how the model learns to stop; everything else is
context. Special tokens appear as their text (`<|im_start|>`), which the tokenizer reads as one id,
exactly as `transformers`' `apply_chat_template` renders and then tokenizes a conversation.

Two kinds of template:

* built-in ones (`CHAT_TEMPLATES`), kept as data: what goes before and after each role's content.
  `llama3`, `chatml` and `mistral` render the same text as those models' own jinja templates.
* `tokenizer`: the checkpoint's own jinja `chat_template`, rendered as transformers renders it. The
  assistant replies are found by rendering the conversation up to each reply, with and without it:
  the reply is what the second rendering adds. A template whose shorter renderings are not the
  start of the longer ones (some rewrite earlier turns) cannot be split this way and is a
  `DataError`.

Whitespace a template writes after a turn's end token (chatml's newline) carries no loss in either
kind: generation stops at the end token, so the model never produces what follows it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, TypedDict

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunegen.runtime.errors import DataError, TokenizerError

__all__ = [
    "ALPACA_CHAT",
    "CHATML",
    "CHAT_TEMPLATES",
    "CHAT_TEMPLATE_NAMES",
    "LLAMA3",
    "MISTRAL",
    "TOKENIZER_TEMPLATE",
    "ChatTemplate",
    "Message",
    "Segment",
    "chat_segments",
    "generation_prompt",
]

# The template name that selects the tokenizer's own jinja `chat_template`.
TOKENIZER_TEMPLATE = "tokenizer"


class Message(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class Segment(NamedTuple):
    """A run of rendered text and whether its tokens carry the loss."""

    text: str
    carries_loss: bool


@dataclass(frozen=True)
class ChatTemplate:
    """A built-in chat template: the text around each role's messages.

    A message renders as `header + content + end`, then `separator`. `{bos}` and `{eos}` stand
    for the tokenizer's BOS and EOS tokens. `turns` has no `system` entry when the template has no
    system turn: the system message is then joined to the first user message with
    `system_joiner`, as Mistral's template does.
    """

    name: str
    begin: str  # text before the first message
    turns: Mapping[str, tuple[str, str]]  # role -> (header, end)
    separator: str = ""
    strip_content: bool = False  # strip whitespace around every content, as Llama 3's `| trim`
    system_joiner: str | None = None
    default_system: str | None = None  # used when the conversation has no system message
    alternate: bool = False  # user and assistant must alternate, starting with user
    special_tokens: tuple[str, ...] = ()  # what the tokenizer must read as single tokens

    @property
    def end_of_turn(self) -> str:
        """What ends an assistant turn (`{eos}`: the tokenizer's EOS); generation stops there."""
        return self.turns["assistant"][1]


LLAMA3 = ChatTemplate(
    name="llama3",
    begin="{bos}",
    turns={
        role: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>")
        for role in ("system", "user", "assistant")
    },
    strip_content=True,
    special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

CHATML = ChatTemplate(
    name="chatml",
    begin="",
    turns={
        role: (f"<|im_start|>{role}\n", "<|im_end|>") for role in ("system", "user", "assistant")
    },
    separator="\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

# Mistral-7B-Instruct v0.1/v0.2: `<s>[INST] {system}\n\n{user} [/INST]{reply}</s>[INST] ...`
MISTRAL = ChatTemplate(
    name="mistral",
    begin="{bos}",
    turns={"user": ("[INST] ", " [/INST]"), "assistant": ("", "{eos}")},
    system_joiner="\n\n",
    alternate=True,
)

# The Alpaca prompt as a conversation; one user and one assistant message render exactly as the
# `alpaca` prompt template of instruct data, followed by the reply and EOS.
ALPACA_CHAT = ChatTemplate(
    name="alpaca",
    begin="{bos}",
    turns={
        "system": ("", "\n\n"),
        "user": ("### Instruction:\n", "\n\n"),
        "assistant": ("### Response:\n", "{eos}"),
    },
    default_system=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
    ),
)

CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t for t in (LLAMA3, CHATML, MISTRAL, ALPACA_CHAT)
}

# Every valid `template` for chat data.
CHAT_TEMPLATE_NAMES: tuple[str, ...] = (*sorted(CHAT_TEMPLATES), TOKENIZER_TEMPLATE)


def chat_segments(
    messages: Sequence[Message],
    template: str,
    *,
    bos_token: str | None,
    eos_token: str | None,
    chat_template: str | None = None,
) -> list[Segment]:
    """Render a conversation as segments; `chat_template` is the jinja source for `tokenizer`.

    `bos_token` / `eos_token` are the tokenizer's BOS and EOS as text (None where it has none).
    A conversation the template cannot render is a `DataError` (without a location: the caller
    knows the record).
    """
    if template == TOKENIZER_TEMPLATE:
        return _jinja_segments(messages, _jinja(chat_template), _specials(bos_token, eos_token))
    return _builtin_segments(messages, _builtin(template), bos_token, eos_token)


def generation_prompt(
    messages: Sequence[Message],
    template: str,
    *,
    bos_token: str | None,
    eos_token: str | None,
    chat_template: str | None = None,
) -> str:
    """The text that asks the model for the next assistant reply to `messages`."""
    if template == TOKENIZER_TEMPLATE:
        variables = _specials(bos_token, eos_token)
        return _render(_jinja(chat_template), messages, add_generation_prompt=True, **variables)
    fmt = _builtin(template)
    rendered = _builtin_segments(messages, fmt, bos_token, eos_token)
    header = fmt.turns["assistant"][0].format(bos=bos_token or "", eos=eos_token or "")
    return "".join(s.text for s in rendered) + header


# -- built-in templates --------------------------------------------------------------------------


def _builtin(name: str) -> ChatTemplate:
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r} (known: {list(CHAT_TEMPLATE_NAMES)})")
    return CHAT_TEMPLATES[name]


def _builtin_segments(
    messages: Sequence[Message], fmt: ChatTemplate, bos_token: str | None, eos_token: str | None
) -> list[Segment]:
    tokens = {"bos": bos_token or "", "eos": eos_token or ""}
    segments = [Segment(fmt.begin.format(**tokens), False)]
    for message in _prepared(messages, fmt):
        header, end = (part.format(**tokens) for part in fmt.turns[message["role"]])
        content = message["content"].strip() if fmt.strip_content else message["content"]
        if message["role"] == "assistant":
            segments += [Segment(header, False), Segment(content + end, True)]
            segments.append(Segment(fmt.separator, False))
        else:
            segments.append(Segment(header + content + end + fmt.separator, False))
    return segments


def _prepared(messages: Sequence[Message], fmt: ChatTemplate) -> list[Message]:
    """`messages` with the template's default system message added or its system message folded."""
    messages = list(messages)
    has_system = bool(messages) and messages[0]["role"] == "system"
    for number, message in enumerate(messages[1:], start=2):
        if message["role"] == "system" and "system" not in fmt.turns:
            raise DataError(
                f"chat template '{fmt.name}' takes a system message only as the first message "
                f"(message {number} is one)"
            )
    if fmt.alternate:
        _check_alternation(messages[has_system:], fmt.name, first_number=1 + has_system)
    if not has_system and fmt.default_system is not None:
        return [Message(role="system", content=fmt.default_system), *messages]
    if has_system and "system" not in fmt.turns:
        if len(messages) < 2:
            raise DataError(f"chat template '{fmt.name}' needs a user message after the system one")
        system, first, rest = messages[0], messages[1], messages[2:]
        joined = system["content"] + fmt.system_joiner + first["content"]
        return [Message(role=first["role"], content=joined), *rest]
    return messages


def _check_alternation(messages: Sequence[Message], name: str, *, first_number: int) -> None:
    for number, message in enumerate(messages, start=first_number):
        expected = "user" if (number - first_number) % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(
                f"chat template '{name}' needs user and assistant messages to alternate, starting "
                f"with user (message {number} is {message['role']}, expected {expected})"
            )


# -- the tokenizer's own jinja template ----------------------------------------------------------


def _jinja_segments(
    messages: Sequence[Message], template: jinja2.Template, variables: Mapping[str, Any]
) -> list[Segment]:
    """Split the rendering at each assistant reply, found by rendering with and without it."""
    whole = _render(template, messages, add_generation_prompt=False, **variables)
    segments: list[Segment] = []
    done = 0  # characters of `whole` already in `segments`
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(template, messages[:index], add_generation_prompt=True, **variables)
        through = _render(template, messages[: index + 1], add_generation_prompt=False, **variables)
        if not (whole.startswith(through) and through.startswith(before) and len(before) >= done):
            raise DataError(
                f"the tokenizer's chat template renders message {index + 1} (an assistant reply) "
                "differently depending on what follows it, so the reply cannot be located; use a "
                "built-in template"
            )
        # Trailing whitespace after the turn's end token is the template's, never generated.
        end = max(len(before), len(through.rstrip()))
        segments += [
            Segment(whole[done : len(before)], False),
            Segment(whole[len(before) : end], True),
        ]
        done = end
    segments.append(Segment(whole[done:], False))
    return segments


def _specials(bos_token: str | None, eos_token: str | None) -> dict[str, str]:
    """The special-token variables transformers gives a template: only the tokens that exist."""
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    return {name: text for name, text in tokens.items() if text is not None}


def _render(
    template: jinja2.Template,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    **variables: Any,
) -> str:
    try:
        return template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise DataError(f"the tokenizer's chat template failed: {e.message or e}") from e


NO_CHAT_TEMPLATE = (
    "chat template 'tokenizer' needs the tokenizer's own chat template (chat_template.jinja, or "
    "chat_template in tokenizer_config.json); this tokenizer has none, so pick a built-in "
    "template: llama3, chatml, mistral or alpaca"
)


def _jinja(source: str | None) -> jinja2.Template:
    if source is None:
        raise TokenizerError(NO_CHAT_TEMPLATE)
    return _compile(source)


@functools.lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    """Compile a chat template in the environment transformers' `apply_chat_template` uses."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(
            f"the tokenizer's chat_template is not valid jinja (line {e.lineno}: {e.message})"
        ) from e


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Like transformers: no HTML escaping (jinja's own `tojson` escapes `<`, `>`, `&`, `'`).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationTag(Extension):
    """Accept `{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers).

    The block renders its body unchanged; replies are located by rendering prefixes instead.
    """

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)
