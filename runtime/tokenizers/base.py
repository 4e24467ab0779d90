"""What every tokenizer gives a recipe: text to ids and back, and the ids the data code needs.

Implementations: `SentencePieceTokenizer` (a sentencepiece `.model`), `HFTokenizer` (a Hugging
Face `tokenizer.json` dir) and `TiktokenTokenizer` (a tiktoken BPE rank file, such as Llama 3's
original `tokenizer.model`). `load_tokenizer(path)` picks one from the files it finds.

The special ids follow one rule each, whatever the file format:

- `bos_id` is the id `encode(..., add_bos=True)` puts first, or None when the tokenizer starts a
  sequence with no BOS (Qwen's, or any whose config adds none): the model was trained that way.
- `eos_id` always exists; `encode(..., add_eos=True)` appends it. Training data needs it after a
  response so that the model learns to stop, even where the Hugging Face tokenizer does not add
  it by default.
- `pad_id` is the pad token, or `eos_id` when the tokenizer has none (Llama's): padding is masked
  out of the loss and sits after the sequence, where causal attention never looks, so any id
  would do, and reusing EOS adds no embedding row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text to token ids and back, the way the model's own tokenizer does it."""

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Ids of `text`, optionally preceded by BOS and followed by EOS.

        Special-token strings in the text (`<|im_start|>`, `<|eot_id|>`, ...) become their single
        ids, as `transformers.AutoTokenizer` does, so a chat template rendered to text encodes
        to the ids the model was trained on.
        """
        ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens (BOS, EOS, pad, chat markers) are dropped by default."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """Id of the vocabulary or special token `token`, or None if there is none."""
        ...

    @property
    def bos_id(self) -> int | None:
        """Id that `encode(add_bos=True)` puts first; None when sequences start without one."""
        ...

    @property
    def eos_id(self) -> int:
        """Id that ends a sequence; `encode(add_eos=True)` appends it."""
        ...

    @property
    def pad_id(self) -> int:
        """Id to pad batches with: the pad token, or `eos_id` when there is none."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (all ids are below it)."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped with the tokenizer, or None if there is none."""
        ...
