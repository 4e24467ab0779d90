"""Tokenizers the generated recipes use."""

from tunegen.runtime.tokenizers.builtin import builtin_tokenizer
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer, builtin_tokenizer_path

__all__ = ["SentencePieceTokenizer", "builtin_tokenizer", "builtin_tokenizer_path"]
