"""Tokenizers of real checkpoints: ids and text identical to `transformers.AutoTokenizer` for the
same files (Llama 3, Qwen, Llama 2/Mistral, Unigram, sentencepiece-converted and tiktoken dirs,
all trained here on a tiny corpus), `load_tokenizer` dispatch, and one-line errors."""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from tunegen.runtime.errors import TokenizerError
from tunegen.runtime.tokenizers.base import Tokenizer
from tunegen.runtime.tokenizers.hf_json import HFTokenizer
from tunegen.runtime.tokenizers.loading import load_tokenizer
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer
from tunegen.runtime.tokenizers.tiktoken_file import (
    LLAMA3_PATTERN,
    TiktokenTokenizer,
    llama3_special_tokens,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>"]
LLAMA3_SPECIAL += ["<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"

# -- text ----------------------------------------------------------------------------------------

WORDS = "the cat sat on a mat and dog ran fast we write code def return import print hello"
WORDS += " world don't we're it's I'm naïve café 日本語 中文 😀 🎉 Ünïcödé ß 1234567 3.14"
EDGE_CASES = [
    *("", " ", "  ", "\t", "\n", "\n\n\n", " \n ", "\r\n", "▁", "▁▁x"),
    *("Hello", " Hello", "  Hello", "Hello ", "Hello  world", "a\tb\tc", "x\r\ny"),
    *("日本語のテキスト", "中文 字符", "😀", "👨‍👩‍👧", "e\u0301", "ﬁ", "Ünïcödé", "\u00a0\u200b"),
    *("don't", "I'M HERE", "123456789", "3.14159", "hello , world . ok ! n't 's"),
    *("a<s>b", " x </s> y", "</s>", "<unk>", "<0x41>", "<|endoftext|>"),
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    *(" <|eot_id|> ", "<|eot_id|>x", "x<|eot_id|>", "<|eot_id|><|eot_id|>"),
]
FRAGMENTS = [
    *("the", " cat", " sat", "  ", "   ", "\t", "\n", " \n", "\r\n", " ", "x", "code()", "{x: 1}"),
    *("日本", "語", "中文", "😀", "🎉", "é", "e\u0301", "ß", "İ", "Ω", "ﬁ", "naïve", "\u00a0"),
    *("'s", "'LL", "n't", "123", "4567", ".", ",", "!", "?", "▁"),
    *("<s>", "</s>", "<unk>", "<pad>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>"),
    *("<|end_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|reserved_token_9|>"),
]


def _random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(FRAGMENTS, k=rng.randint(1, 14))) for _ in range(count)]


TEXTS = EDGE_CASES + _random_texts(260)


def _corpus(count: int = 1500) -> list[str]:
    rng = random.Random(1)
    words = WORDS.split()
    tails = ["", ".", "!", "?", "\n", "  ", "\t"]
    return [
        " ".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice(tails) for _ in range(count)
    ]


# -- tokenizers trained here -----------------------------------------------------------------------


def _byte_level(pattern: str, specials: list[str], *, nfc: bool = False) -> Backend:
    """A byte-level BPE like Llama 3's (or Qwen's, with its pattern and NFC)."""
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.NFC() if nfc else None
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=alphabet, special_tokens=specials, show_progress=False
    )
    backend.train_from_iterator(_corpus(), trainer)
    return backend


def _llama3() -> Backend:
    backend = _byte_level(LLAMA3_PATTERN, LLAMA3_SPECIAL)
    bos = ("<|begin_of_text|>", backend.token_to_id("<|begin_of_text|>"))
    template = processors.TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos])
    backend.post_processor = processors.Sequence(
        [processors.ByteLevel(trim_offsets=False), template]
    )
    return backend


def _qwen(pattern: str = QWEN_PATTERN) -> Backend:
    backend = _byte_level(pattern, QWEN_SPECIAL, nfc=pattern == QWEN_PATTERN)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _llama2() -> Backend:
    """A BPE with byte fallback as converted from Llama 2's sentencepiece model for the Hub."""
    backend = Backend(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator(_corpus(), trainer)
    # Byte pieces after the special tokens, as in sentencepiece; then the learned pieces.
    spec = json.loads(backend.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    spec["model"]["vocab"] = vocab
    for token in spec["added_tokens"]:
        token.update(id=vocab[token["content"]], normalized=False)
    backend = Backend.from_str(json.dumps(spec))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return backend


def _unigram() -> Backend:
    backend = Backend(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    eos = ("</s>", backend.token_to_id("</s>"))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[eos])
    return backend


def _sentencepiece_model() -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return model.getvalue()


def _tiktoken_ranks() -> bytes:
    """A tiktoken rank file: the byte-level BPE's tokens as bytes, ranked by id."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = _byte_level(LLAMA3_PATTERN, []).get_vocab()
    lines = [
        base64.b64encode(bytes(to_byte[c] for c in token)) + b" %d" % rank
        for token, rank in sorted(vocab.items(), key=lambda item: item[1])
    ]
    return b"\n".join(lines) + b"\n"


# -- checkpoint dirs ----------------------------------------------------------------------------


def _added_tokens(backend: Backend) -> dict[str, dict]:
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {
        str(i): {k: getattr(t, k) for k in keys}
        for i, t in backend.get_added_tokens_decoder().items()
    }


def _write_dir(
    path: Path, backend: Backend | None, config: dict, model_type: str | None = None
) -> Path:
    path.mkdir(parents=True)
    if backend is not None:
        backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if model_type is not None:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    return path


def _llama3_dir(
    root: Path, name: str = "llama3", tokenizer_class: str = "PreTrainedTokenizerFast"
) -> Path:
    backend = _llama3()
    config = {
        "added_tokens_decoder": _added_tokens(backend),
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,  # as Llama 3 ships it; ignored for BPE
        "tokenizer_class": tokenizer_class,
    }
    return _write_dir(root / name, backend, config, "llama")


def _llama3_llama_class_dir(root: Path) -> Path:
    """A byte-level tokenizer.json under the Llama class (many fine-tunes): kept as it is."""
    return _llama3_dir(root, "llama3-llama-class", "LlamaTokenizerFast")


def _llama3_saved_dir(root: Path) -> Path:
    """Saved by transformers 5 itself: no added_tokens_decoder, chat_template.jinja."""
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_llama3(),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(root / "llama3-saved")
    return root / "llama3-saved"


def _qwen_config(backend: Backend) -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens(backend),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _qwen_dir(root: Path) -> Path:
    backend = _qwen()
    return _write_dir(root / "qwen", backend, _qwen_config(backend), "qwen2")


def _qwen_rebuilt_dir(root: Path) -> Path:
    """Qwen2Tokenizer imposes Qwen's pattern and NFC whatever tokenizer.json says."""
    backend = _qwen(LLAMA3_PATTERN)
    return _write_dir(root / "qwen-rebuilt", backend, _qwen_config(backend), "qwen3")


def _llama2_config(*, legacy: bool) -> dict:
    added = {"content": "", "lstrip": False, "normalized": False, "rstrip": False}
    added |= {"single_word": False, "special": True}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): added | {"content": token} for i, token in enumerate(["<unk>", "<s>", "</s>"])
        },
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": legacy,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "LlamaTokenizer",
    }


def _llama2_dir(root: Path) -> Path:
    return _write_dir(root / "llama2", _llama2(), _llama2_config(legacy=False), "llama")


def _llama2_legacy_dir(root: Path) -> Path:
    """Older files: legacy mode, no config.json, special tokens in special_tokens_map.json."""
    config = _llama2_config(legacy=True)
    del config["added_tokens_decoder"]
    config["bos_token"] = {"__type": "AddedToken", "content": "<s>", "normalized": False}
    path = _write_dir(root / "llama2-legacy", _llama2(), config)
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    return path


def _mistral_dir(root: Path) -> Path:
    """Llama 2's files in a Mistral checkpoint: AutoTokenizer keeps tokenizer.json as it is."""
    return _write_dir(root / "mistral", _llama2(), _llama2_config(legacy=False), "mistral")


def _phi3_dir(root: Path) -> Path:
    """Phi-3 names the Llama class too, but AutoTokenizer keeps its tokenizer.json."""
    return _write_dir(root / "phi3", _llama2(), _llama2_config(legacy=False), "phi3")


def _unigram_dir(root: Path) -> Path:
    config = {
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": True,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return _write_dir(root / "unigram", _unigram(), config)


def _sentencepiece_dir(root: Path) -> Path:
    """A sentencepiece model converted by transformers' LlamaTokenizer, then saved."""
    pytest.importorskip("google.protobuf", reason="transformers reads .model files with protobuf")
    source = _write_dir(root / "spm-source", None, _llama2_config(legacy=False))
    (source / "tokenizer.model").write_bytes(_sentencepiece_model())
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(root / "sentencepiece")
    return root / "sentencepiece"


def _tiktoken_dir(root: Path) -> Path:
    ranks = _tiktoken_ranks()
    first = len(ranks.splitlines())
    added = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    declared = {
        str(first + i): added | {"content": token, "special": True}
        for i, token in enumerate(llama3_special_tokens())
    }
    config = {
        "added_tokens_decoder": declared,
        "add_bos_token": True,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    path = _write_dir(root / "tiktoken", None, config)
    (path / "tokenizer.model").write_bytes(ranks)
    return path


DIRS: dict[str, Callable[[Path], Path]] = {
    "llama3": _llama3_dir,
    "llama3-saved": _llama3_saved_dir,
    "llama3-llama-class": _llama3_llama_class_dir,
    "qwen": _qwen_dir,
    "qwen-rebuilt": _qwen_rebuilt_dir,
    "llama2": _llama2_dir,
    "llama2-legacy": _llama2_legacy_dir,
    "mistral": _mistral_dir,
    "phi3": _phi3_dir,
    "unigram": _unigram_dir,
    "sentencepiece": _sentencepiece_dir,
    "tiktoken": _tiktoken_dir,
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The checkpoint dir named `name` in DIRS, built on first use."""
    root = tmp_path_factory.mktemp("tokenizers")

    def make(name: str) -> Path:
        path = root / name
        return path if path.exists() else DIRS[name](root)

    return make


@pytest.fixture(scope="module", params=sorted(DIRS))
def pair(request: pytest.FixtureRequest, made: Callable[[str], Path]) -> tuple[Tokenizer, object]:
    """(ours, AutoTokenizer's) for one checkpoint dir."""
    path = made(request.param)
    return load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


# -- parity ------------------------------------------------------------------------------------


def test_encode_matches_autotokenizer(pair: tuple[Tokenizer, object]) -> None:
    ours, theirs = pair
    eos = ours.eos_id
    # AutoTokenizer's default special tokens: BOS where the files add one, EOS where they do.
    adds_eos = theirs.encode("a")[-1] == eos
    for text in TEXTS:
        body = theirs.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_bos=False, add_eos=False) == body, text
        assert ours.encode(text, add_eos=adds_eos) == theirs.encode(text), text
        assert ours.encode(text) == theirs.encode(text) + [eos] * (not adds_eos), text


def test_decode_matches_autotokenizer(pair: tuple[Tokenizer, object]) -> None:
    ours, theirs = pair
    rng = random.Random(2)
    encoded = [ours.encode(text) for text in TEXTS]
    # Random ids too: partial UTF-8 sequences, byte-fallback pieces, specials anywhere.
    arbitrary = [
        [rng.randrange(ours.vocab_size) for _ in range(rng.randint(0, 12))] for _ in range(300)
    ]
    for ids in encoded + arbitrary:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            ), (ids, skip)


def test_special_ids_and_sizes_match_autotokenizer(pair: tuple[Tokenizer, object]) -> None:
    ours, theirs = pair
    adds_bos = theirs.encode("a", add_special_tokens=True)[0] == theirs.bos_token_id
    assert ours.bos_id == (theirs.bos_token_id if adds_bos else None)
    assert ours.eos_id == theirs.eos_token_id
    pad = theirs.pad_token_id
    assert ours.pad_id == (theirs.eos_token_id if pad is None else pad)
    assert ours.vocab_size == len(theirs)
    assert ours.chat_template == theirs.chat_template
    for token in ("<|eot_id|>", "<|im_start|>", "<s>", "</s>", "hello", "no such token"):
        expected = theirs.convert_tokens_to_ids(token)
        assert ours.token_to_id(token) == (None if expected == theirs.unk_token_id else expected)


def test_all_implement_the_protocol(pair: tuple[Tokenizer, object]) -> None:
    assert isinstance(pair[0], Tokenizer)


def test_llama2_files_encode_by_model_type(made: Callable[[str], Path]) -> None:
    """The same files give different ids in a Llama and a Mistral dir, as in transformers 5."""
    llama, mistral = (HFTokenizer(made(name)) for name in ("llama2", "mistral"))
    raw = Backend.from_file(str(made("llama2") / "tokenizer.json"))
    assert (
        mistral.encode(" Hello", add_bos=False, add_eos=False)
        == raw.encode(" Hello", add_special_tokens=False).ids
    )
    assert (
        llama.encode(" Hello", add_bos=False, add_eos=False)
        != raw.encode(" Hello", add_special_tokens=False).ids
    )


# -- the ids recipes rely on --------------------------------------------------------------------


def test_special_token_strings_encode_to_one_id(made: Callable[[str], Path]) -> None:
    qwen = load_tokenizer(made("qwen"))
    im_start, im_end = qwen.token_to_id("<|im_start|>"), qwen.token_to_id("<|im_end|>")
    ids = qwen.encode("<|im_start|>user\nhi<|im_end|>", add_bos=False, add_eos=False)
    assert ids[0] == im_start and ids[-1] == im_end
    assert qwen.bos_id is None and qwen.encode("hi")[-1] == qwen.eos_id == im_end
    llama3 = load_tokenizer(made("llama3-saved"))
    eot = llama3.token_to_id("<|eot_id|>")
    assert llama3.encode("hi<|eot_id|>", add_eos=False)[-1] == eot == llama3.eos_id
    assert llama3.decode(llama3.encode("hi<|eot_id|>")) == "hi"
    assert llama3.decode(llama3.encode("hi"), skip_special_tokens=False) == (
        "<|begin_of_text|>hi<|eot_id|>"
    )


def test_pad_falls_back_to_eos(made: Callable[[str], Path]) -> None:
    llama3 = load_tokenizer(made("llama3"))
    assert llama3.pad_id == llama3.eos_id == llama3.token_to_id("<|end_of_text|>")
    assert load_tokenizer(made("llama3-saved")).pad_id == llama3.token_to_id(
        "<|finetune_right_pad_id|>"
    )


def test_chat_template_from_config_or_jinja_file(made: Callable[[str], Path]) -> None:
    assert (made("llama3-saved") / "chat_template.jinja").is_file()
    assert load_tokenizer(made("llama3-saved")).chat_template == CHAT_TEMPLATE
    assert load_tokenizer(made("llama3")).chat_template == CHAT_TEMPLATE
    assert load_tokenizer(made("unigram")).chat_template is None


# -- tiktoken ----------------------------------------------------------------------------------


def test_tiktoken_file_alone_gets_llama3_special_tokens(
    made: Callable[[str], Path], tmp_path: Path
) -> None:
    path = made("tiktoken")
    alone = tmp_path / "tokenizer.model"  # no tokenizer_config.json next to it
    shutil.copy(path / "tokenizer.model", alone)
    tok = load_tokenizer(alone)
    assert isinstance(tok, TiktokenTokenizer)
    first = len(alone.read_bytes().splitlines())
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (first, first + 1, first + 1)
    assert tok.token_to_id("<|eot_id|>") == first + 9
    assert tok.vocab_size == first + 256
    assert tok.chat_template is None
    # The same ids as the dir converted by transformers, whose BOS and EOS the config names.
    theirs = load_tokenizer(path)
    instruct = TiktokenTokenizer(alone, eos_token="<|eot_id|>")
    for text in TEXTS:
        assert instruct.encode(text) == theirs.encode(text), text


def test_tiktoken_options(made: Callable[[str], Path]) -> None:
    path = made("tiktoken") / "tokenizer.model"
    tok = TiktokenTokenizer(
        path, special_tokens=["<|endoftext|>", "<|pad|>"], bos_token=None, eos_token="<|endoftext|>"
    )
    assert tok.bos_id is None
    assert tok.encode("a<|pad|>", add_eos=False)[-1] == tok.token_to_id("<|pad|>") == tok.eos_id + 1
    assert tok.pad_id == tok.eos_id
    assert tok.token_to_id("the") == tok.encode("the", add_eos=False)[0]
    assert tok.decode(tok.encode("naïve 日本 😀")) == "naïve 日本 😀"


# -- load_tokenizer ----------------------------------------------------------------------------


def test_load_tokenizer_picks_by_content(made: Callable[[str], Path], tmp_path: Path) -> None:
    assert isinstance(load_tokenizer(made("llama3")), HFTokenizer)
    assert isinstance(load_tokenizer(made("llama3") / "tokenizer.json"), HFTokenizer)
    model = tmp_path / "spm" / "tokenizer.model"
    model.parent.mkdir()
    model.write_bytes(_sentencepiece_model())
    assert isinstance(load_tokenizer(model.parent), SentencePieceTokenizer)
    renamed = tmp_path / "tiktoken.model"
    renamed.write_bytes(model.read_bytes())  # the content decides, not the name
    assert isinstance(load_tokenizer(renamed), SentencePieceTokenizer)
    ranks = tmp_path / "ranks" / "tokenizer.model"
    ranks.parent.mkdir()
    ranks.write_bytes(_tiktoken_ranks())
    assert isinstance(load_tokenizer(ranks.parent), TiktokenTokenizer)


def _error(path: Path) -> str:
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_files(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope") == f"tokenizer path '{tmp_path / 'nope'}' not found"
    assert _error(tmp_path) == (
        f"tokenizer dir '{tmp_path}' holds none of tokenizer.json, tokenizer.model, tiktoken.model"
    )


def test_corrupt_tokenizer_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": ', encoding="utf-8")
    assert _error(tmp_path).startswith(f"'{path}' is not valid JSON (")
    path.write_text("{}", encoding="utf-8")
    assert _error(tmp_path) == f"'{path}' is not a Hugging Face tokenizer.json (no 'model' object)"
    path.write_text('{"model": {"type": "Nope"}}', encoding="utf-8")
    assert _error(tmp_path).startswith(f"'{path}' is not a valid tokenizer.json: ")


def test_corrupt_or_incomplete_config(made: Callable[[str], Path], tmp_path: Path) -> None:
    shutil.copy(made("llama3") / "tokenizer.json", tmp_path / "tokenizer.json")
    config = tmp_path / "tokenizer_config.json"
    assert _error(tmp_path) == f"'{config}' not found; it names the EOS token"
    config.write_text("{oops", encoding="utf-8")
    assert _error(tmp_path).startswith(f"'{config}' is not valid JSON (")
    config.write_text("[]", encoding="utf-8")
    assert _error(tmp_path) == f"'{config}' holds no JSON object"
    config.write_text('{"bos_token": "<|begin_of_text|>"}', encoding="utf-8")
    assert _error(tmp_path) == f"'{config}' names no eos_token"
    config.write_text('{"added_tokens_decoder": {"7": {"special": true}}}', encoding="utf-8")
    assert _error(tmp_path) == (
        f"'{config}': malformed special tokens (no 'content' in {{'special': True}})"
    )


def test_corrupt_model_files(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x00\x01 not a tokenizer")
    assert _error(tmp_path) == (
        f"tokenizer file '{path}' is neither a sentencepiece model nor a tiktoken rank file"
    )
    path.write_bytes(b"\x0a\x05garbage")
    assert _error(path) == f"tokenizer file '{path}' is not a sentencepiece model"
    path.write_bytes(b"YQ== 0\nYg== 1\nnot a rank line\n")
    assert _error(path) == f"{path}:3: not a tiktoken rank line ('<base64 token> <rank>')"
    path.write_bytes(b"YQ== 0\nYg== 2\n")
    assert _error(path) == f"tokenizer file '{path}': the ranks are not 0..1, each once"
    path.write_bytes(b"YQ== 0\nYg== 1\n")
    with pytest.raises(TokenizerError, match=r"EOS token 'nope' is not a special token$"):
        TiktokenTokenizer(path, eos_token="nope")
