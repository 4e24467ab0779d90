"""A sentencepiece tokenizer with the few methods a recipe needs.

Leading spaces: sentencepiece adds a dummy prefix space to every text it encodes (as Llama's
tokenizer does), so `encode("cat dog")` gives the same pieces `▁cat ▁dog` whether the text is a
whole string or the tail of one. A response encoded on its own therefore starts with a `▁` piece,
exactly as it would after a space; `decode` removes that one leading space again, so
`decode(encode(text)) == text` for any text (the built-in model uses identity normalization and
keeps repeated spaces; byte fallback covers characters outside its vocabulary).

Prompt and response are encoded separately and concatenated (see `data/instruct.py`). Decoded
together, such a sequence reads `prompt + " " + response`: the dummy space is the price of a
well-defined split, and it is paid identically in training and in generation, where only the
generated ids are decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from tunegen.runtime.errors import TokenizerError

__all__ = ["SentencePieceTokenizer", "builtin_tokenizer_path"]

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def builtin_tokenizer_path(name: str = "tiny") -> Path:
    """Path of a tokenizer bundled with the runtime (`runtime/assets/<name>/tokenizer.model`)."""
    path = _ASSETS / name / "tokenizer.model"
    if not path.is_file():
        available = sorted(p.parent.name for p in _ASSETS.glob("*/tokenizer.model"))
        raise TokenizerError(f"no built-in tokenizer named {name!r} (available: {available})")
    return path


class SentencePieceTokenizer:
    """Encode text to ids and back with a sentencepiece `.model` file."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file '{path}' not found")
        self._path = path
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"tokenizer file '{path}' is not a sentencepiece model") from e
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise TokenizerError(f"tokenizer file '{path}' defines no BOS or no EOS token")
        # Models without a pad token (Llama's) pad with EOS: padding is masked out of the loss and
        # sits after the sequence, where causal attention never looks, so any id would do.
        pad = self._sp.pad_id()
        self._pad_id = pad if pad >= 0 else self._sp.eos_id()
        self._special = {self.bos_id, self.eos_id, self.pad_id}

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of `text`, optionally wrapped in BOS ... EOS."""
        ids = self._sp.encode(text)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    @property
    def export_files(self) -> dict[str, Path]:
        """The file that defines this tokenizer, under the name checkpoint dirs give it."""
        return {"tokenizer.model": self._path}

    @property
    def chat_template(self) -> str | None:
        """A bare sentencepiece model carries no chat template."""
        return None

    def token_to_id(self, token: str) -> int | None:
        """The id of piece `token`, or None if the vocabulary lacks it."""
        piece_id = self._sp.piece_to_id(token)
        return (
            None
            if piece_id == self._sp.unk_id() and token != self._sp.id_to_piece(piece_id)
            else piece_id
        )

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; BOS, EOS and padding are dropped unless `skip_special_tokens` is False."""
        if skip_special_tokens:
            return self._sp.decode([int(i) for i in ids if int(i) not in self._special])
        # sentencepiece renders control tokens as "", so write those pieces out by hand.
        parts: list[str] = []
        run: list[int] = []
        for i in map(int, ids):
            if i in self._special:
                parts += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join([*parts, self._sp.decode(run)])
