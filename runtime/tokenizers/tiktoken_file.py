"""A tiktoken BPE rank file, such as the `tokenizer.model` in Llama 3's original release.

Each line of the file is a token's bytes in base64 and its rank, which is also its id. Special
tokens are not in the file: they follow the ranks, in the order given (Llama 3's by default). The
defaults are Llama 3.1's (also 3.2 and 3.3): its split pattern and 256 special tokens, of which
`<|begin_of_text|>`, `<|end_of_text|>`, `<|start_header_id|>`, `<|end_header_id|>` and
`<|eot_id|>` have the same ids in Llama 3.0 (only reserved names differ).

Encoding matches what transformers builds from such a file (its `TikTokenConverter`), and Meta's
own tokenizer: special-token strings in the text are special tokens, and nothing else is.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from tunegen.runtime.errors import TokenizerError
from tunegen.runtime.tokenizers.base import TokenizerBase

__all__ = ["LLAMA3_PATTERN", "TiktokenTokenizer", "is_tiktoken_file", "llama3_special_tokens"]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_special_tokens(count: int = 256) -> list[str]:
    """Llama 3.1's special tokens in id order, the first at id len(ranks) (128000)."""
    named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    return named + [f"<|reserved_special_token_{2 + i}|>" for i in range(count - len(named))]


def is_tiktoken_file(path: Path) -> bool:
    """Whether the first line of `path` reads like a tiktoken rank file (`<base64> <rank>`)."""
    try:
        with path.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return False
    return _parse_line(first.strip()) is not None


def _parse_line(line: bytes) -> tuple[bytes, int] | None:
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    try:
        return base64.b64decode(parts[0], validate=True), int(parts[1])
    except (binascii.Error, ValueError):
        return None


def _read_ranks(path: Path) -> dict[bytes, int]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file '{path}': {e}") from e
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line.strip())
        if parsed is None:
            raise TokenizerError(
                f"{path}:{number}: not a tiktoken rank line ('<base64 token> <rank>')"
            )
        ranks[parsed[0]] = parsed[1]
    if not ranks:
        raise TokenizerError(f"tokenizer file '{path}' holds no tiktoken ranks")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(
            f"tokenizer file '{path}': the ranks are not 0..{len(ranks) - 1}, each once"
        )
    return ranks


class TiktokenTokenizer(TokenizerBase):
    """Encode and decode with a tiktoken rank file and a list of special tokens.

    `bos_token` is the token `encode(add_bos=True)` puts first; None starts sequences without one.
    `eos_token` ends them; `pad_token` pads (None: pad with EOS). `token_to_id` takes a special
    token or a regular token's text (its UTF-8 bytes are looked up in the ranks).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        special_tokens: Sequence[str] | None = None,
        pattern: str = LLAMA3_PATTERN,
        bos_token: str | None = "<|begin_of_text|>",
        eos_token: str = "<|end_of_text|>",
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file '{path}' not found")
        self._ranks = _read_ranks(path)
        specials = llama3_special_tokens() if special_tokens is None else list(special_tokens)
        first = len(self._ranks)  # special tokens follow the ranks, as in Meta's and HF's code
        self._special = {token: first + i for i, token in enumerate(specials)}
        try:
            self._encoding = tiktoken.Encoding(
                path.name,
                pat_str=pattern,
                mergeable_ranks=self._ranks,
                special_tokens=self._special,
            )
        except ValueError as e:  # a pattern the regex engine rejects
            raise TokenizerError(f"'{path}': cannot build a tiktoken encoding: {e}") from e
        self._special_ids = set(self._special.values())
        self._path = path
        bos_id = None if bos_token is None else self._special_id(bos_token, "BOS")
        eos_id = self._special_id(eos_token, "EOS")
        super().__init__(
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=eos_id if pad_token is None else self._special_id(pad_token, "pad"),
            vocab_size=first + len(specials),
            chat_template=chat_template,
        )

    @property
    def export_files(self) -> dict[str, Path]:
        """The rank file that defines this tokenizer, named as in Llama 3's original checkpoints."""
        return {"tokenizer.model": self._path}

    def _special_id(self, token: str, role: str) -> int:
        if token not in self._special:
            raise TokenizerError(f"'{self._path}': {role} token {token!r} is not a special token")
        return self._special[token]

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token, or of the regular token whose bytes are `token`'s UTF-8."""
        if token in self._special:
            return self._special[token]
        return self._ranks.get(token.encode("utf-8"))

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Ids of `text` (special-token strings in it become special ids), with BOS/EOS on request."""
        ids = self._encoding.encode(text, allowed_special="all")
        return self.with_bos_eos(ids, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, unknown ids are skipped."""
        skipped = self._special_ids if skip_special_tokens else set()
        kept = [i for i in map(int, ids) if 0 <= i < self.vocab_size and i not in skipped]
        return self._encoding.decode(kept, errors="replace")
