"""The bundled sentencepiece tokenizer: ids, round trips, and the errors users see."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunegen.runtime.data.templates import PROMPT_TEMPLATES
from tunegen.runtime.errors import TokenizerError
from tunegen.runtime.tokenizers import SentencePieceTokenizer, builtin_tokenizer_path

REPO = Path(__file__).resolve().parents[2]
DEMO_TRAIN = REPO / "specs" / "data" / "demo_train.jsonl"


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(builtin_tokenizer_path("tiny"))


def _demo_records() -> list[dict[str, str]]:
    return [json.loads(line) for line in DEMO_TRAIN.read_text(encoding="utf-8").splitlines()]


def test_builtin_path_is_inside_the_package() -> None:
    import tunegen.runtime

    path = builtin_tokenizer_path()
    assert path == Path(tunegen.runtime.__file__).parent / "assets" / "tiny" / "tokenizer.model"
    assert path.is_file()


def test_unknown_builtin_name() -> None:
    with pytest.raises(
        TokenizerError, match=r"^no built-in tokenizer named 'huge' \(available: \['tiny'\]\)$"
    ):
        builtin_tokenizer_path("huge")


def test_special_ids_and_vocab_size(tok: SentencePieceTokenizer) -> None:
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 512)


def test_encode_wraps_in_bos_and_eos_on_request(tok: SentencePieceTokenizer) -> None:
    body = tok.encode("cat dog", add_bos=False, add_eos=False)
    assert len(body) == 2  # one piece per task word
    assert tok.encode("cat dog") == [1, *body, 2]
    assert tok.encode("cat dog", add_eos=False) == [1, *body]
    assert tok.encode("cat dog", add_bos=False) == [*body, 2]
    assert tok.encode("", add_bos=False, add_eos=False) == []


def test_decode_drops_special_ids_anywhere(tok: SentencePieceTokenizer) -> None:
    body = tok.encode("sun moon", add_bos=False, add_eos=False)
    assert tok.decode([1, body[0], 3, body[1], 2, 3, 3]) == "sun moon"


def test_task_words_and_digits_are_single_pieces(tok: SentencePieceTokenizer) -> None:
    words = sorted({w for r in _demo_records() for w in r["output"].split() if w.isalpha()})
    assert len(words) == 48
    for word in words:
        assert len(tok.encode(word, add_bos=False, add_eos=False)) == 1, word
    # Digits are split one per id (split_digits), whatever their grouping.
    assert len(tok.encode("7391", add_bos=False, add_eos=False)) == 5  # "▁" + four digits


def test_round_trip_on_every_demo_text(tok: SentencePieceTokenizer) -> None:
    for record in _demo_records():
        for template in PROMPT_TEMPLATES.values():
            prompt, response = template.format(record)
            assert tok.decode(tok.encode(prompt)) == prompt
            assert tok.decode(tok.encode(response)) == response


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld, ﬁne — naïve café",  # accents and a ligature that NFKC would rewrite
        "emoji 🙂🚀 and CJK 中文字符, Ελληνικά, العربية",
        "  two leading spaces, two  inside, one trailing ",
        "tabs\tand\nnewlines\r\n\n",
        "\u2028line separator and \x00 a NUL",
    ],
)
def test_round_trip_on_arbitrary_unicode(tok: SentencePieceTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert 0 not in ids  # byte fallback: nothing becomes <unk>
    assert tok.decode(ids) == text


def test_prompt_and_response_encode_separately(tok: SentencePieceTokenizer) -> None:
    prompt, response = PROMPT_TEMPLATES["alpaca"].format(
        {"instruction": "Reverse the words.", "input": "cat dog sun", "output": "sun dog cat"}
    )
    prompt_ids = tok.encode(prompt, add_eos=False)
    response_ids = tok.encode(response, add_bos=False)
    # The response starts with a dummy-prefix space piece; decoding only the generated ids
    # (what evaluation does) gives the response back exactly.
    assert tok.decode(response_ids) == "sun dog cat"
    assert len(prompt_ids) + len(response_ids) < 64
    # Decoded together, the dummy space shows between the two parts.
    assert tok.decode(prompt_ids + response_ids) == prompt + " " + response


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(
        TokenizerError, match=f"^tokenizer file '{re.escape(str(missing))}' not found$"
    ):
        SentencePieceTokenizer(missing)


def test_directory_is_not_a_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"not found$"):
        SentencePieceTokenizer(tmp_path)


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"this is not a sentencepiece model\n" * 10)
    with pytest.raises(
        TokenizerError,
        match=f"^tokenizer file '{re.escape(str(bad))}' is not a sentencepiece model$",
    ):
        SentencePieceTokenizer(bad)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.model"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(TokenizerError) as info:
        SentencePieceTokenizer(bad)
    assert "\n" not in str(info.value)


def test_sentencepiece_tokenizer_follows_the_protocol():
    from tunegen.runtime.tokenizers import Tokenizer, builtin_tokenizer

    tok = builtin_tokenizer("tiny")
    assert isinstance(tok, Tokenizer)
    assert tok.chat_template is None
    assert tok.token_to_id("<s>") == tok.bos_id
    assert tok.token_to_id("no-such-piece-xyz") is None
    ids = tok.encode("Reverse the words.")
    assert tok.decode(ids) == "Reverse the words."
    assert tok.decode(ids, skip_special_tokens=False) == "<s>Reverse the words.</s>"
