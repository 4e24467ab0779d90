"""`tunegen generate RUN_DIR_OR_MODEL (--prompt TEXT | --chat)`: talk to a trained model.

The model comes from `runtime.model_loading` (a run's export, adapter or latest checkpoint, an HF
checkpoint dir or a built-in model); tokens are sampled with the KV cache and printed as they come.
`--chat` formats each turn as the model was trained to read it: the run's chat template, or its
instruct template (single-turn: instruct data has no history), else the tokenizer's own
`chat_template`; `--template` picks another.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from tunegen.compiler.cli.app import Debug, app, set_debug
from tunegen.runtime.errors import TunegenError

if TYPE_CHECKING:  # the runtime (and torch) load only when the command runs
    from tunegen.runtime.model_loading import LoadedModel
    from tunegen.runtime.tokenizers import Tokenizer

__all__ = ["ChatFormat", "chat_format", "generate_command", "stream_text"]

GENERATE_EPILOG = """\b
Examples:
  tunegen generate runs/lora --prompt "The capital of France is"
  tunegen generate runs/lora --chat              a conversation; /exit or Ctrl-D ends it
  echo "Sort the digits: 312" | tunegen generate runs/demo --chat --temperature 0"""
EXIT_COMMANDS = ("/exit", "/quit")


@app.command("generate", epilog=GENERATE_EPILOG)
def generate_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="RUN_DIR_OR_MODEL",
            help="A run dir, a Hugging Face checkpoint or PEFT adapter dir, or a built-in model.",
        ),
    ],
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", metavar="TEXT", help="Continue this text (no template)."),
    ] = None,
    chat: Annotated[
        bool,
        typer.Option("--chat", help="Chat turn by turn (stdin lines) in the model's template."),
    ] = False,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            metavar="NAME",
            help="--chat template: llama3, chatml, mistral, alpaca, tokenizer, or instruct's plain.",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, metavar="N", help="Tokens per answer.")
    ] = 256,
    temperature: Annotated[
        float,
        typer.Option("--temperature", min=0.0, metavar="T", help="0 picks the likeliest token."),
    ] = 0.7,
    top_p: Annotated[
        float, typer.Option("--top-p", metavar="P", help="Nucleus sampling, 0 < P <= 1.")
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", min=1, metavar="K", help="Sample among the K likeliest tokens."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Sampling seed.")] = 0,
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    debug: Debug = False,
) -> None:
    """Generate text from a trained model, streaming tokens as they come; --chat to converse."""
    set_debug(debug)
    if (prompt is None) == (not chat):
        raise TunegenError("tunegen generate: give exactly one of --prompt TEXT or --chat")
    if not 0 < top_p <= 1:
        raise TunegenError(f"tunegen generate: --top-p must be in (0, 1], got {top_p}")
    import torch

    from tunegen.runtime.model_loading import load_trained_model

    loaded = load_trained_model(model, device=device)
    options = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "generator": torch.Generator().manual_seed(seed),
    }
    if prompt is not None:
        ids = loaded.tokenizer.encode(prompt, add_bos=True, add_eos=False)
        _answer(loaded, ids, {loaded.tokenizer.eos_id}, options)
        return
    fmt = chat_format(loaded, template)
    typer.echo(f"chatting with {loaded.source} ({fmt.describe()}); /exit or Ctrl-D ends", err=True)
    _chat(loaded, fmt, options)


class ChatFormat:
    """How a conversation becomes prompt ids, and which tokens end a reply."""

    def __init__(self, tokenizer: Tokenizer, template: str, *, instruct: bool) -> None:
        from tunegen.runtime.evaluation import stop_tokens_for

        self.tokenizer = tokenizer
        self.template = template
        self.instruct = instruct
        self.stops = stop_tokens_for(tokenizer, None if instruct else template)

    def describe(self) -> str:
        kind = "instruct template, single-turn" if self.instruct else "chat template"
        return f"{kind} {self.template}"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids asking for the next assistant reply (instruct: to the last user message only)."""
        if self.instruct:
            from tunegen.runtime.data.templates import PROMPT_TEMPLATES

            text = PROMPT_TEMPLATES[self.template].prompt(messages[-1]["content"])
            return self.tokenizer.encode(text, add_bos=True, add_eos=False)
        from tunegen.runtime.data.chat import chat_prompt_tokens

        return chat_prompt_tokens(self.tokenizer, messages, template=self.template)


def chat_format(loaded: LoadedModel, template: str | None) -> ChatFormat:
    """The `--template`, else the run's data template, else the tokenizer's own chat template."""
    from tunegen.runtime.data import CHAT_TEMPLATE_NAMES, PROMPT_TEMPLATES
    from tunegen.runtime.data.chat import check_chat_tokenizer
    from tunegen.runtime.model_loading import run_data_format

    tokenizer = loaded.tokenizer
    data_format, run_template = run_data_format(loaded.config)
    if template is None:
        template = run_template if data_format in ("chat", "instruct") else None
        if template is None and tokenizer.chat_template is not None:
            template = "tokenizer"
        if template is None:
            raise TunegenError(
                f"{loaded.source}: no chat template (its tokenizer has none and no run config"
                " names one); pass --template NAME"
            )
    # The run's own instruct template, or an instruct-only name (plain), formats single turns.
    instruct = data_format == "instruct" and template == run_template
    if instruct or (template in PROMPT_TEMPLATES and template not in CHAT_TEMPLATE_NAMES):
        return ChatFormat(tokenizer, template, instruct=True)
    if template not in CHAT_TEMPLATE_NAMES:
        known = ", ".join(sorted({*CHAT_TEMPLATE_NAMES, *PROMPT_TEMPLATES}))
        raise TunegenError(f"--template: unknown template {template!r} (known: {known})")
    check_chat_tokenizer(tokenizer, template)
    return ChatFormat(tokenizer, template, instruct=False)


def _chat(loaded: LoadedModel, fmt: ChatFormat, options: dict) -> None:
    """Read user turns from stdin until /exit or EOF; stream each reply."""
    messages: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            return
        if not line.strip():
            continue
        if not interactive:  # a piped session: show each turn, so the transcript reads
            typer.echo(f"> {line.rstrip()}")
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = _answer(loaded, fmt.prompt_ids(messages), fmt.stops, options)
        messages.append({"role": "assistant", "content": reply})


def _answer(loaded: LoadedModel, ids: list[int], stops: set[int], options: dict) -> str:
    """Stream the model's continuation of `ids` to stdout; return its text."""
    from tunegen.runtime.generation import sample_stream

    tokens = sample_stream(loaded.model, ids, stop_tokens=stops, **options)
    pieces = []
    for piece in stream_text(loaded.tokenizer, tokens):
        pieces.append(piece)
        typer.echo(piece, nl=False)
        sys.stdout.flush()
    text = "".join(pieces)
    typer.echo("" if text.strip() else "(empty reply: the model ended its turn at once)")
    return text


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int]) -> Iterator[str]:
    """The text of `tokens` in pieces, each as soon as it is final.

    Each step decodes all tokens so far and yields what was added: a token may be half a UTF-8
    character (held back until complete) or change how the text before it decodes (spaces in
    sentencepiece), which decoding the whole sequence gets right.
    """
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        if len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
    text = tokenizer.decode(ids) if ids else ""
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown) :]
