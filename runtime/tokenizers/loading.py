"""`load_tokenizer(path)`: the right tokenizer for a checkpoint dir or a tokenizer file.

A dir is looked at as `transformers.AutoTokenizer` looks at it: `tokenizer.json` first (an
`HFTokenizer`), else `tokenizer.model` (or `tiktoken.model`), which is either a sentencepiece
model (a `SentencePieceTokenizer`) or a tiktoken rank file (a `TiktokenTokenizer`); the content
decides, not the name. A file is read by its content the same way.

A tiktoken file next to a `tokenizer_config.json` takes its special tokens from there, as
AutoTokenizer does (BOS only with `add_bos_token: true`); alone, it gets Llama 3's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegen.runtime.errors import TokenizerError
from tunegen.runtime.tokenizers.base import Tokenizer
from tunegen.runtime.tokenizers.hf_json import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    HFTokenizer,
    chat_template_in,
    read_tokenizer_config,
)
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer
from tunegen.runtime.tokenizers.tiktoken_file import TiktokenTokenizer, is_tiktoken_file

__all__ = ["load_tokenizer"]

_MODEL_FILES = ("tokenizer.model", "tiktoken.model")
_SENTENCEPIECE_FIRST_BYTE = b"\x0a"  # protobuf field 1 (the pieces), length-delimited


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in `path`: a checkpoint or tokenizer dir, or a single tokenizer file."""
    path = Path(path)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return HFTokenizer(path)
        for name in _MODEL_FILES:
            if (path / name).is_file():
                return _from_model_file(path / name)
        expected = ", ".join([TOKENIZER_FILE, *_MODEL_FILES])
        raise TokenizerError(f"tokenizer dir '{path}' holds none of {expected}")
    if not path.is_file():
        raise TokenizerError(f"tokenizer path '{path}' not found")
    if path.name == TOKENIZER_FILE:
        return HFTokenizer(path)
    return _from_model_file(path)


def _from_model_file(path: Path) -> Tokenizer:
    if is_tiktoken_file(path):
        return _tiktoken(path)
    try:
        with path.open("rb") as f:
            first = f.read(1)
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file '{path}': {e}") from e
    if first == _SENTENCEPIECE_FIRST_BYTE:
        return SentencePieceTokenizer(path)
    raise TokenizerError(
        f"tokenizer file '{path}' is neither a sentencepiece model nor a tiktoken rank file"
    )


def _tiktoken(path: Path) -> TiktokenTokenizer:
    config = read_tokenizer_config(path.parent)
    if not config:
        return TiktokenTokenizer(path)
    eos = _content(config.get("eos_token"))
    if eos is None:
        raise TokenizerError(f"'{path.parent / CONFIG_FILE}' names no eos_token")
    return TiktokenTokenizer(
        path,
        special_tokens=_tiktoken_specials(path, config),
        bos_token=_content(config.get("bos_token")) if config.get("add_bos_token") else None,
        eos_token=eos,
        pad_token=_content(config.get("pad_token")),
        chat_template=chat_template_in(path.parent, config),
    )


def _tiktoken_specials(path: Path, config: dict[str, Any]) -> list[str]:
    """The special tokens TokenizersBackend gives a tiktoken file, in id order.

    Those of `added_tokens_decoder` at or past the end of the ranks (gaps get placeholder names),
    then the extra and named special tokens not among them.
    """
    try:
        declared = {int(i): _content(t) for i, t in config.get("added_tokens_decoder", {}).items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise TokenizerError(
            f"'{path.parent / CONFIG_FILE}': malformed added_tokens_decoder"
        ) from e
    first = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    last = max(declared, default=first - 1)
    specials = [declared.get(i) or f"<|reserved_token_{i}|>" for i in range(first, last + 1)]
    extra = config.get("extra_special_tokens") or []
    extra = list(extra.values()) if isinstance(extra, dict) else list(extra)
    named = [config.get(k) for k in ("bos_token", "eos_token", "pad_token")]
    for token in map(_content, [*extra, *named]):
        if token is not None and token not in specials:
            specials.append(token)
    return specials


def _content(token: Any) -> str | None:
    """A token's text, from a config entry that is a string or a serialized AddedToken."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None
