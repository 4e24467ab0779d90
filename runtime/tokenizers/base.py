"""What every tokenizer gives a recipe: text to ids and back, and the ids the data code needs.

Implementations: `SentencePieceTokenizer` (a sentencepiece `.model`), `HFTokenizer` (a Hugging
Face `tokenizer.json` dir) and `TiktokenTokenizer` (a tiktoken BPE rank file, such as Llama 3's
original `tokenizer.model`). `load_tokenizer(path)` picks one from the files it finds. The last two
work out their special ids once, when built, and share `TokenizerBase`, which serves them.

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

__all__ = ["Tokenizer", "TokenizerBase"]


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


class TokenizerBase:
    """The `Tokenizer` properties of a tokenizer that fixes them when it is built, and its BOS/EOS.

    A subclass works out the special ids, vocabulary size and chat template in its `__init__`,
    passes them to this one, and implements `encode` (with `with_bos_eos`), `decode` and
    `token_to_id`.
    """

    def __init__(
        self,
        *,
        bos_id: int | None,
        eos_id: int,
        pad_id: int,
        vocab_size: int,
        chat_template: str | None,
    ) -> None:
        self._bos_id = bos_id
        self._eos_id = eos_id
        self._pad_id = pad_id
        self._vocab_size = vocab_size
        self._chat_template = chat_template

    @property
    def bos_id(self) -> int | None:
        """Id that `encode(add_bos=True)` puts first; None when sequences start without one."""
        return self._bos_id

    @property
    def eos_id(self) -> int:
        """Id that ends a sequence; `encode(add_eos=True)` appends it."""
        return self._eos_id

    @property
    def pad_id(self) -> int:
        """Id to pad batches with: the pad token, or `eos_id` when there is none."""
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (all ids are below it)."""
        return self._vocab_size

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped with the tokenizer, or None if there is none."""
        return self._chat_template

    def with_bos_eos(self, ids: list[int], *, add_bos: bool, add_eos: bool) -> list[int]:
        """`ids` after BOS (if `add_bos` and the tokenizer has one) and before EOS (if `add_eos`).

        The rule of `Tokenizer.encode`, in one place for the tokenizers that derive from this.
        """
        bos = [self._bos_id] if add_bos and self._bos_id is not None else []
        return bos + ids + [self._eos_id] * add_eos
