"""Tokenizers bundled with the built-in models, named as configs name them."""

from __future__ import annotations

from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer, builtin_tokenizer_path

__all__ = ["builtin_tokenizer"]


def builtin_tokenizer(name: str) -> SentencePieceTokenizer:
    """The tokenizer bundled with built-in model `name` (e.g. "tiny").

    Configs use this component rather than a file path so that a generated config keeps working
    wherever tunegen is installed.
    """
    return SentencePieceTokenizer(builtin_tokenizer_path(name))
