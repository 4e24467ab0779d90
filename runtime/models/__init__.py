"""Model definitions: one file per family, built by keyword-only builder functions."""

from .builtin import BUILTIN_MODELS, tiny
from .llama import LINEAR_LAYER_NAMES, Transformer, llama

__all__ = ["BUILTIN_MODELS", "LINEAR_LAYER_NAMES", "Transformer", "llama", "tiny"]
