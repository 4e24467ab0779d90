"""Models that ship with tunegen and need no downloaded checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from .llama import Transformer, llama

__all__ = ["BUILTIN_MODELS", "tiny"]


def tiny() -> Transformer:
    """A ~3.1 M-parameter Llama for the demo spec and the test suite, trained from random init.

    Its vocabulary is the bundled 512-piece sentencepiece tokenizer. It is small enough that a few
    hundred CPU steps fit a toy task, which is all it is for: it knows no language to start with.
    """
    return llama(
        vocab_size=512,
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        hidden_dim=704,
        max_seq_len=512,
        tie_embeddings=True,
    )


#: Built-in model names (as written in a spec) to their builders.
BUILTIN_MODELS: dict[str, Callable[[], Transformer]] = {"tiny": tiny}
