"""Tokenizers the generated recipes use, all following the `Tokenizer` protocol in `base.py`."""

from tunegen.runtime.tokenizers.base import Tokenizer
from tunegen.runtime.tokenizers.builtin import builtin_tokenizer
from tunegen.runtime.tokenizers.hf_json import HFTokenizer
from tunegen.runtime.tokenizers.loading import load_tokenizer
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer, builtin_tokenizer_path
from tunegen.runtime.tokenizers.tiktoken_file import TiktokenTokenizer

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "builtin_tokenizer",
    "builtin_tokenizer_path",
    "load_tokenizer",
]
