"""A Hugging Face tokenizer dir (`tokenizer.json` + `tokenizer_config.json`), read without transformers.

The ids match `transformers.AutoTokenizer.from_pretrained(dir)` (transformers 5), which is what
the checkpoint was trained and is served with. Most of it is `tokenizer.json` run by the
`tokenizers` library; the rest is what AutoTokenizer does on top, repeated here:

- **Special tokens** come from `tokenizer_config.json` (or, for dirs without its
  `added_tokens_decoder`, the older `special_tokens_map.json`); named ones missing from
  `tokenizer.json` are added as special tokens, so `<|eot_id|>` in a text is one id.
- **BOS/EOS**: the post-processor of `tokenizer.json` decides what a sequence starts with (BOS for
  Llama 3 and Llama 2, nothing for Qwen). transformers 5 ignores `add_bos_token` and
  `add_eos_token` in the config when `tokenizer.json` exists, and so do we.
- **Two classes rebuild the pipeline**: for `LlamaTokenizer` (Llama 2, TinyLlama: a sentencepiece
  BPE converted to `tokenizer.json`) AutoTokenizer keeps only the vocabulary and merges and uses a
  Metaspace pre-tokenizer, which collapses the dummy prefix with a leading space (" Hi" -> "▁Hi",
  where sentencepiece gives "▁▁Hi") and, unless the config says `legacy: true`, adds no prefix
  after a special token; for `Qwen2Tokenizer` it uses Qwen's NFC normalizer and split pattern.
  Which class applies depends on `tokenizer_class` and on `model_type` in `config.json` (a
  Mistral or Phi-3 dir with the same files keeps `tokenizer.json` as it is).
- **Decoding** skips special tokens by default and undoes word-piece spacing (`" ."` -> `"."`) only
  where the config asks for it and the model is not BPE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from tunegen.runtime.errors import TokenizerError
from tunegen.runtime.tokenizers.base import TokenizerBase

__all__ = ["HFTokenizer", "chat_template_in", "read_tokenizer_config"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

_NAMED_SPECIAL = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_ADDED_TOKEN_FIELDS = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"}

# How AutoTokenizer picks a tokenizer class for the model types tunegen loads (transformers 5,
# without the optional mistral-common package): the class it registers for the model type,
# where that overrides `tokenizer_class` in tokenizer_config.json. "generic" keeps tokenizer.json.
_GENERIC = "TokenizersBackend"
_REGISTERED_CLASS = {
    "mistral": _GENERIC,
    "mixtral": _GENERIC,
    "phi3": _GENERIC,
    "qwen2": "Qwen2Tokenizer",
    "qwen2_moe": "Qwen2Tokenizer",
    "qwen3": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer",
}
# Model types whose configs on the Hub name a wrong class, so the registered one wins.
_HUB_CLASS_IGNORED = {"phi3", "qwen2"}
_GENERIC_NAMES = {_GENERIC, "PreTrainedTokenizerFast", "PythonBackend"}

# Qwen2Tokenizer's split pattern (digits one at a time), from transformers' tokenization_qwen2.py.
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class HFTokenizer(TokenizerBase):
    """Encode and decode with a Hugging Face tokenizer dir, exactly as AutoTokenizer does."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        folder = path.parent if path.name == TOKENIZER_FILE and path.is_file() else path
        tokenizer_file = folder / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise TokenizerError(f"tokenizer file '{tokenizer_file}' not found")
        self._backend, config = _load(folder, tokenizer_file)

        eos_id = self._special_id(config, "eos_token")
        if eos_id is None:
            config_file = folder / CONFIG_FILE
            if not config_file.is_file():
                raise TokenizerError(f"'{config_file}' not found; it names the EOS token")
            raise TokenizerError(f"'{config_file}' names no eos_token")
        bos_id = self._post_processor_bos(tokenizer_file, eos_id)
        pad_id = self._special_id(config, "pad_token")
        self._clean_up = _cleans_up(config, self._backend)
        self._folder = folder
        super().__init__(
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=eos_id if pad_id is None else pad_id,
            vocab_size=max(self._backend.get_vocab(with_added_tokens=True).values()) + 1,
            chat_template=chat_template_in(folder, config),
        )

    @property
    def export_files(self) -> dict[str, Path]:
        """The files that define this tokenizer, by the names a checkpoint dir gives them."""
        names = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, CHAT_TEMPLATE_FILE)
        return {name: self._folder / name for name in names if (self._folder / name).is_file()}

    def token_to_id(self, token: str) -> int | None:
        """Id of `token` (a vocabulary entry or an added token), or None."""
        return self._backend.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Ids of `text`, after BOS (where the tokenizer uses one) and before EOS, on request."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return self.with_bos_eos(ids, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`, as AutoTokenizer's `decode` gives it."""
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up else text

    def _special_id(self, config: dict[str, Any], key: str) -> int | None:
        token = _content(config.get(key))
        return None if token is None else self._backend.token_to_id(token)

    def _post_processor_bos(self, where: Path, eos_id: int) -> int | None:
        """The one id the post-processor puts before a sequence, if any (after it: EOS or nothing)."""
        probe = "a"
        body = self._backend.encode(probe, add_special_tokens=False).ids
        full = self._backend.encode(probe, add_special_tokens=True).ids
        starts = [i for i in range(len(full) - len(body) + 1) if full[i : i + len(body)] == body]
        prefix = full[: starts[0]] if starts else full
        suffix = full[starts[0] + len(body) :] if starts else []
        if not starts or len(prefix) > 1 or suffix not in ([], [eos_id]):
            raise TokenizerError(
                f"'{where}': the post-processor adds {prefix} before and {suffix} after a sequence;"
                " only a BOS before and an EOS after are supported"
            )
        return prefix[0] if prefix else None


# --- reading the files --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file '{path}': {e}") from e


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"'{path}' is not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"'{path}' holds no JSON object")
    return data


def _tokenizer_spec(path: Path, text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"'{path}' is not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise TokenizerError(f"'{path}' is not a Hugging Face tokenizer.json (no 'model' object)")
    return spec


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json, with special_tokens_map.json over it where AutoTokenizer reads that.

    Empty when neither file exists.
    """
    config = _read_json(folder / CONFIG_FILE) or {}
    if "added_tokens_decoder" not in config:
        special_map = _read_json(folder / SPECIAL_TOKENS_MAP_FILE) or {}
        config = {**config, **special_map}
    if not config.get("extra_special_tokens") and "additional_special_tokens" in config:
        config["extra_special_tokens"] = config["additional_special_tokens"]
    return config


def _tokenizer_class(folder: Path, config: dict[str, Any], text: str) -> str:
    """The tokenizer class AutoTokenizer instantiates for this dir (see `_REGISTERED_CLASS`)."""
    model_config = _read_json(folder / "config.json") or {}
    model_type = model_config.get("model_type")
    hub = config.get("tokenizer_class") or model_config.get("tokenizer_class")
    hub = hub.removesuffix("Fast") if isinstance(hub, str) else None
    registered = _REGISTERED_CLASS.get(model_type)
    if hub is None:
        return registered or _GENERIC
    if hub == "LlamaTokenizer" and model_type not in _HUB_CLASS_IGNORED and '"ByteLevel"' in text:
        return _GENERIC  # a byte-level tokenizer.json (Llama 3 style) that names the Llama class
    if registered is not None and registered != hub:
        if registered == _GENERIC:
            return _GENERIC
        chosen = registered if model_type in _HUB_CLASS_IGNORED else hub
        return _GENERIC if chosen in _GENERIC_NAMES else chosen
    return _GENERIC if hub in _GENERIC_NAMES else hub


# --- building the backend ----------------------------------------------------------------------


def _load(folder: Path, tokenizer_file: Path) -> tuple[Backend, dict[str, Any]]:
    """The backend AutoTokenizer would run, and the config with its class's defaults."""
    text = _read_text(tokenizer_file)
    spec = _tokenizer_spec(tokenizer_file, text)
    config = read_tokenizer_config(folder)
    tokenizer_class = _tokenizer_class(folder, config, text)
    config = {**_CLASS_DEFAULTS.get(tokenizer_class, {}), **config}
    backend = _backend(tokenizer_file, text, spec, config, tokenizer_class)
    try:
        _add_missing_tokens(backend, config, spec, rebuilt=tokenizer_class in _REBUILDS)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(
            f"'{folder / CONFIG_FILE}': malformed special tokens ({reason})"
        ) from e
    if tokenizer_class == "Qwen2Tokenizer":
        # Qwen2Tokenizer.__init__ re-adds every special token as special; it can change flags.
        backend.add_tokens([AddedToken(t, special=True) for t in _all_special(config)])
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
    backend.no_truncation()  # AutoTokenizer truncates and pads only when asked to
    backend.no_padding()
    return backend, config


# Special tokens each rebuilding class assumes when the config does not name them.
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "Qwen2Tokenizer": {
        "unk_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    },
}


def _backend(
    path: Path, text: str, spec: dict[str, Any], config: dict[str, Any], tokenizer_class: str
) -> Backend:
    try:
        loaded = Backend.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(f"'{path}' is not a valid tokenizer.json: {reason}") from e
    rebuild = _REBUILDS.get(tokenizer_class)
    if rebuild is None:
        return loaded
    if not isinstance(loaded.model, models.BPE):
        raise TokenizerError(f"'{path}': {tokenizer_class} needs a BPE model, found another")
    backend = rebuild(spec["model"], config)
    backend.post_processor = loaded.post_processor
    return backend


def _vocab_and_merges(model: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _llama_backend(model: dict[str, Any], config: dict[str, Any]) -> Backend:
    """LlamaTokenizer's pipeline: Metaspace instead of the converted sentencepiece normalizer."""
    vocab, merges = _vocab_and_merges(model)
    backend = Backend(models.BPE(vocab, merges, fuse_unk=True, byte_fallback=True, dropout=None))
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    if not add_prefix_space:
        scheme = "never"
    else:
        scheme = "always" if config.get("legacy", False) else "first"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=scheme, split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _qwen2_backend(model: dict[str, Any], config: dict[str, Any]) -> Backend:
    """Qwen2Tokenizer's pipeline: NFC, Qwen's split pattern, byte-level BPE."""
    vocab, merges = _vocab_and_merges(model)
    bpe = models.BPE(
        vocab,
        merges,
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    backend = Backend(bpe)
    backend.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(Regex(_QWEN2_PATTERN), behavior="isolated", invert=False)
    add_prefix_space = bool(config.get("add_prefix_space") or False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    backend.decoder = decoders.ByteLevel()
    return backend


_REBUILDS = {"LlamaTokenizer": _llama_backend, "Qwen2Tokenizer": _qwen2_backend}


def _added_token(spec: Any, *, special: bool | None = None) -> AddedToken:
    """An AddedToken from a config entry: a string (a special token) or a serialized AddedToken."""
    if isinstance(spec, str):
        return AddedToken(spec, special=True if special is None else special)
    fields = {k: v for k, v in spec.items() if k in _ADDED_TOKEN_FIELDS}
    if not isinstance(fields.get("content"), str):
        raise ValueError(f"no 'content' in {spec!r}")
    if special is not None:
        fields["special"] = special
    return AddedToken(**fields)


def _content(spec: Any) -> str | None:
    if isinstance(spec, dict):
        return spec.get("content")
    return spec if isinstance(spec, str) else None


def _named_special(config: dict[str, Any]) -> list[Any]:
    """Entries of the named special tokens: bos, eos, ..., and model-specific `*_token` strings."""
    names = list(_NAMED_SPECIAL)
    names += [
        k
        for k, v in config.items()
        if k.endswith("_token") and k not in _NAMED_SPECIAL and isinstance(v, str)
    ]
    extra = config.get("extra_special_tokens")
    found = [config.get(k) for k in names]
    if isinstance(extra, dict):
        found += extra.values()
    elif isinstance(extra, list):
        found += extra
    return [entry for entry in found if isinstance(entry, (str, dict))]


def _all_special(config: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for spec in _named_special(config):
        content = _content(spec)
        if content is not None:
            seen.setdefault(content)
    return list(seen)


def _add_missing_tokens(
    backend: Backend, config: dict[str, Any], spec: dict[str, Any], *, rebuilt: bool
) -> None:
    """Add what TokenizersBackend.__init__ adds: config's added tokens and named special tokens.

    A rebuilt backend starts with no added tokens; AutoTokenizer then adds those of the config's
    `added_tokens_decoder`, or of tokenizer.json where the config has none.
    """
    declared = config.get("added_tokens_decoder")
    if declared is not None and not isinstance(declared, dict):
        raise TypeError("added_tokens_decoder is not an object")
    if declared is None and rebuilt:
        declared = {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"}
            for t in spec.get("added_tokens", [])
        }
    present = backend.get_added_tokens_decoder().values()
    # A declared token that differs from the present one in any flag is added again, which
    # updates its flags (TokenizersBackend compares their reprs).
    present_reprs = {repr(t) for t in present}
    to_add: list[AddedToken] = []
    for _, entry in sorted((declared or {}).items(), key=lambda item: int(item[0])):
        token = _added_token(entry)
        if repr(token) not in present_reprs:
            to_add.append(token)
    named = {t.content for t in present} | {t.content for t in to_add}
    for entry in _named_special(config):
        token = _added_token(entry, special=True)
        if token.content not in named:
            to_add.append(token)
            named.add(token.content)
    if to_add:
        backend.add_tokens(to_add)


def chat_template_in(folder: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja if present (transformers 5 saves it there), else the config's entry."""
    template_file = folder / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        return _read_text(template_file)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _cleans_up(config: dict[str, Any], backend: Backend) -> bool:
    """Whether decode applies `clean_up_tokenization`: transformers 5 never does for BPE."""
    if not config.get("clean_up_tokenization_spaces", False):
        return False
    forced = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
    return not isinstance(backend.model, models.BPE) or bool(config.get(forced, False))


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop the spaces word-piece decoding leaves."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text
