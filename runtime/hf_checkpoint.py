"""Hugging Face checkpoints in and out: `load_model` reads one, `save_hf_checkpoint` writes one.

A Hugging Face checkpoint dir holds `config.json` and its weights as safetensors, either one
`model.safetensors` or shards listed in `model.safetensors.index.json` (tensor name -> file), plus
tokenizer files and `generation_config.json`. How each supported `architectures` name maps onto
our model is data in `runtime.models.llama` (`HF_ARCHITECTURES`, `HF_CONFIG_KEYS`).

Loading builds the model on the meta device (no memory) and then reads the shards one at a time,
assigning each tensor into the model as it is read, so the peak is about one copy of the model.
Names and shapes are checked against the safetensors headers before any weight is read, so a
checkpoint that does not fit fails in a second with the offending tensor named. Phi-3's fused
`qkv_proj` / `gate_up_proj` are split on load and fused again on save.

Saving writes into a hidden temp dir next to `out_dir` and renames it into place (the helpers of
`runtime.durable_io`), so `out_dir` is never left half written. LoRA updates are folded into
the written weights without touching the model in memory.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .durable_io import TEMP_PREFIX, fsync_dir, prepare_tensors, write_bytes, write_safetensors
from .errors import CheckpointError, and_more, one_line
from .lora import LoRALinear, dense_weight
from .models.builtin import BUILTIN_MODELS
from .models.llama import (
    HF_ARCHITECTURES,
    HF_CONFIG_KEYS,
    ROPE_TYPES,
    HFArchitecture,
    Transformer,
    llama,
)

if TYPE_CHECKING:
    from .tokenizers.base import Tokenizer

__all__ = [
    "CONFIG_FILE",
    "COPIED_FILES",
    "INDEX_FILE",
    "WEIGHTS_FILE",
    "atomic_dir",
    "hf_config_for",
    "load_model",
    "model_kwargs_from_hf_config",
    "read_json",
    "save_hf_checkpoint",
    "write_json",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_PATTERN = "model{suffix}.safetensors"  # transformers' names: model-00001-of-00002...

#: Files a saved checkpoint copies from its source dir when they exist there.
COPIED_FILES: tuple[str, ...] = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

# Tensors some older checkpoints carry that are derived from the config rather than learned.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)

# config.json dtype names (and tunegen's short ones) -> torch dtypes.
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Size units of `max_shard_size`, as transformers reads them ("5GB" is 5e9 bytes, "5GiB" 5 * 2**30).
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


# -- config.json -> model ---------------------------------------------------------------------------


def model_kwargs_from_hf_config(
    config: Mapping[str, Any], *, where: str = CONFIG_FILE, max_seq_len: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The architecture name and `llama(...)` keyword arguments an HF config.json describes.

    `max_seq_len` replaces `max_position_embeddings` (it bounds the RoPE tables and the longest
    sequence). Anything this runtime would compute differently from transformers is refused with
    a CheckpointError that names `where` and the config key.
    """
    name, arch = _architecture(config, where)
    for key, value in arch.requires.items():
        if config.get(key, value) != value:
            raise CheckpointError(
                f"{where}: {key}={config[key]!r} is not supported for {name} (only {value!r})"
            )
    kwargs: dict[str, Any] = {}
    for kwarg, key in HF_CONFIG_KEYS.items():
        if key in config and config[key] is not None:
            kwargs[kwarg] = config[key]
        elif key in arch.defaults:
            kwargs[kwarg] = arch.defaults[key]
        else:
            raise CheckpointError(f"{where}: required key {key!r} is missing")
    if kwargs["n_kv_heads"] is None:
        kwargs["n_kv_heads"] = kwargs["n_heads"]
    if kwargs["head_dim"] is None:
        kwargs["head_dim"] = kwargs["dim"] // kwargs["n_heads"]
    kwargs.update(arch.fixed)
    kwargs["rope_base"], kwargs["rope_scaling"] = _rope(config, arch, where)
    if max_seq_len is not None:
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
        kwargs["max_seq_len"] = max_seq_len
    _check_sliding_window(config, arch, kwargs["max_seq_len"], where)
    return name, kwargs


def _architecture(config: Mapping[str, Any], where: str) -> tuple[str, HFArchitecture]:
    names = config.get("architectures") or []
    if not names:  # old configs may name only the model type
        names = [n for n, a in HF_ARCHITECTURES.items() if a.model_type == config.get("model_type")]
    supported = ", ".join(HF_ARCHITECTURES)
    if not names:
        raise CheckpointError(
            f"{where}: names no architecture (model_type {config.get('model_type')!r}); supported:"
            f" {supported}"
        )
    if names[0] not in HF_ARCHITECTURES:
        raise CheckpointError(
            f"{where}: architecture {names[0]!r} is not supported; supported: {supported}"
        )
    return names[0], HF_ARCHITECTURES[names[0]]


def _rope(
    config: Mapping[str, Any], arch: HFArchitecture, where: str
) -> tuple[float, dict[str, Any] | None]:
    """(rope_base, rope_scaling) from transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` (which transformers prefers when both are present)."""
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if any(isinstance(value, Mapping) for value in params.values()):
        raise CheckpointError(f"{where}: RoPE parameters per layer type are not supported")
    base = params.get("rope_theta") or config.get("rope_theta") or arch.defaults["rope_theta"]
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise CheckpointError(
            f"{where}: partial_rotary_factor={partial} is not supported (only 1.0: RoPE over"
            " the whole head)"
        )
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise CheckpointError(
            f"{where}: RoPE type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if kind == "default":
        return float(base), None
    scaling = {"rope_type": kind, **{key: params[key] for key in ROPE_TYPES[kind] if key in params}}
    if "original_max_position_embeddings" in ROPE_TYPES[kind]:
        scaling.setdefault("original_max_position_embeddings", config["max_position_embeddings"])
    missing = [key for key in ROPE_TYPES[kind] if key not in scaling]
    if missing:
        raise CheckpointError(f"{where}: RoPE type {kind!r} needs {', '.join(missing)}")
    return float(base), scaling


def _check_sliding_window(
    config: Mapping[str, Any], arch: HFArchitecture, max_seq_len: int, where: str
) -> None:
    """A sliding window no shorter than the longest sequence is plain causal attention; a shorter
    one would need a mask this runtime does not build, so it is refused."""
    window = config.get("sliding_window")
    if arch.sliding_window_switch is not None and not config.get(arch.sliding_window_switch):
        window = None
    if window is not None and window < max_seq_len:
        raise CheckpointError(
            f"{where}: sliding_window={window} is shorter than max_seq_len={max_seq_len}; tunegen"
            f" attends over the whole sequence, so load it with max_seq_len <= {window}"
        )


# -- loading ----------------------------------------------------------------------------------------


def load_model(
    path_or_name: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    max_seq_len: int | None = None,
) -> Transformer:
    """A built-in model by name (`tiny`, randomly initialised) or a local HF checkpoint dir.

    `dtype` (a torch dtype or "fp32"/"bf16"/"fp16"/"float32"/...) defaults to the checkpoint's own
    (config.json `dtype` / `torch_dtype`, else as stored), so a bf16 checkpoint stays bf16; built-in
    models default to fp32. `max_seq_len` overrides `max_position_embeddings` (checkpoint dirs only):
    use it to bound the RoPE tables of long-context models or to stay within a sliding window. A
    `str` equal to a built-in name means the built-in model; pass a `Path` for a dir of that name.
    Problems with the checkpoint raise CheckpointError naming the file and tensor.
    """
    if dtype == "auto":
        dtype = None
    if not (dtype is None or isinstance(dtype, torch.dtype) or dtype in _DTYPES):
        raise ValueError(
            f"dtype must be a torch.dtype or one of {', '.join(_DTYPES)}, got {dtype!r}"
        )
    target = _dtype(dtype, where="dtype")
    if isinstance(path_or_name, str) and path_or_name in BUILTIN_MODELS:
        if max_seq_len is not None:
            raise ValueError("max_seq_len applies to checkpoint directories, not built-in models")
        model = BUILTIN_MODELS[path_or_name]()
        if target is not None:
            model.to(target)
            model.model.reset_rope()  # keep the tables fp32, as for checkpoints
        return model
    root = Path(path_or_name)
    if not root.is_dir():
        raise CheckpointError(
            f"{root} is not a checkpoint directory, nor a built-in model"
            f" ({', '.join(BUILTIN_MODELS)})"
        )
    config_file = root / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{root} has no {CONFIG_FILE}: not a Hugging Face checkpoint dir")
    config = read_json(config_file)
    arch_name, kwargs = model_kwargs_from_hf_config(
        config, where=str(config_file), max_seq_len=max_seq_len
    )
    if target is None:
        stored = config.get("dtype", config.get("torch_dtype"))
        target = _dtype(stored, where=f"{config_file}: dtype") if stored else None
    with torch.device("meta"):  # no memory: the shards' tensors become the parameters
        try:
            model = llama(**kwargs)
        except ValueError as error:
            raise CheckpointError(f"{config_file}: {one_line(error)}") from None
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    arch = HF_ARCHITECTURES[arch_name]
    plan = _load_plan(shapes, arch, _shard_files(root), tied=model.lm_head is None)
    for file, tensors in plan.items():
        _load_shard(model, file, tensors, shapes, target)
    model.model.reset_rope()  # the tables were built on the meta device
    model.hf_config = config
    return model


# A checkpoint tensor's destination: our tensor names it is split into (one unless fused).
_Plan = dict[Path, dict[str, list[str]]]


def _load_plan(
    shapes: Mapping[str, tuple[int, ...]], arch: HFArchitecture, files: list[Path], *, tied: bool
) -> _Plan:
    """Map every tensor of every shard to model tensors, checking names and shapes from the
    safetensors headers alone, before anything is read."""
    plan: _Plan = {}
    found: set[str] = set()
    for file in files:
        plan[file] = {}
        for key, shape in _header(file).items():
            if key.endswith(_DERIVED_SUFFIXES) or (tied and key == "lm_head.weight"):
                continue  # recomputed / the tied embedding, as transformers does
            targets = _split_name(key, arch)
            if any(t not in shapes for t in targets):
                raise CheckpointError(
                    f"{file}: tensor {key!r} is not part of this model (is config.json right?)"
                )
            want = (sum(shapes[t][0] for t in targets), *shapes[targets[0]][1:])
            if shape != want:
                raise CheckpointError(
                    f"{file}: tensor {key!r} has shape {shape} but config.json implies {want}"
                )
            plan[file][key] = targets
            found.update(targets)
    missing = [name for name in shapes if name not in found]
    if missing:
        raise CheckpointError(
            f"{files[0].parent}: model tensor {missing[0]!r} is missing from the checkpoint"
            f"{and_more(missing, 'missing')}"
        )
    return plan


def _load_shard(
    model: Transformer,
    file: Path,
    tensors: Mapping[str, list[str]],
    shapes: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype | None,
) -> None:
    """Read one shard and make its tensors the model's parameters (assigned, not copied)."""
    loaded: dict[str, Tensor] = {}
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key, targets in tensors.items():
                tensor = f.get_tensor(key)
                if dtype is not None:
                    tensor = tensor.to(dtype)
                if len(targets) == 1:
                    loaded[targets[0]] = tensor
                    continue
                # Own storage per part, so each saves and trains as a tensor of its own.
                parts = tensor.split([shapes[t][0] for t in targets])
                loaded.update((t, part.clone()) for t, part in zip(targets, parts, strict=True))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{file} is not a readable safetensors file: {one_line(error)}"
        ) from None
    model.load_state_dict(loaded, strict=False, assign=True)


def _shard_files(root: Path) -> list[Path]:
    """The weight files of a checkpoint dir, from its index if it is sharded."""
    index = root / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        names = list(dict.fromkeys(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or Path(name).name != name:
                raise CheckpointError(f"{index} names a shard outside the checkpoint: {name!r}")
            if not (root / name).is_file():
                raise CheckpointError(f"{index} names shard {name!r}, which is missing")
        return [root / name for name in names]
    single = root / WEIGHTS_FILE
    if single.is_file():
        return [single]
    others = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
    hint = f" (found {others[0]}: convert it to safetensors first)" if others else ""
    raise CheckpointError(f"{root} has neither {WEIGHTS_FILE} nor {INDEX_FILE}{hint}")


def _header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from a safetensors header without loading any data."""
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{file} is not a readable safetensors file: {one_line(error)}"
        ) from None


def _split_name(key: str, arch: HFArchitecture) -> list[str]:
    """Our tensor names for checkpoint tensor `key`: `...qkv_proj.weight` -> q/k/v for Phi-3."""
    for fused, parts in arch.fused.items():
        marker = f".{fused}."
        if marker in key:
            return [key.replace(marker, f".{part}.") for part in parts]
    return [key]


def _fuse_name(name: str, arch: HFArchitecture) -> tuple[str, list[str]]:
    """The inverse of `_split_name`: the checkpoint name for our tensor `name` and all our tensors
    concatenated into it (`...q_proj.weight` -> `...qkv_proj.weight`, [q, k, v] for Phi-3)."""
    for fused, parts in arch.fused.items():
        for part in parts:
            marker = f".{part}."
            if marker in name:
                return name.replace(marker, f".{fused}."), [
                    name.replace(marker, f".{p}.") for p in parts
                ]
    return name, [name]


# -- saving ----------------------------------------------------------------------------------------


def save_hf_checkpoint(
    model: Transformer,
    out_dir: str | Path,
    source_dir: str | Path | None = None,
    *,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
    tokenizer: Tokenizer | None = None,
    merge_lora: bool = True,
) -> Path:
    """Write `model` as an HF checkpoint dir that `AutoModelForCausalLM.from_pretrained` loads.

    config.json comes from `source_dir`, else from the checkpoint the model was loaded from
    (`model.hf_config`), else `hf_config_for(model)`; its `dtype` is set to the weights'. Tensor
    names are the source's (Phi-3 fused again); LoRA layers are written merged, and the model in
    memory is left as it is. Weights over `max_shard_size` (bytes, or "500MB", "2GB", "1GiB") are
    split into shards with an index. Tokenizer files and generation_config.json are copied from
    `source_dir` when present; `tokenizer` (the one training used) writes its own files over them
    (its `export_files`), so the dir is a complete checkpoint even for a built-in model. A
    non-empty `out_dir` is replaced only with `overwrite=True`. Returns `out_dir`.
    `merge_lora=False` writes the base model under the adapters instead (quantized base weights
    dequantized), the base a PEFT adapter of this model loads onto.
    """
    out = Path(out_dir)
    limit = _shard_bytes(max_shard_size)
    if source_dir is not None:
        config = read_json(Path(source_dir) / CONFIG_FILE)
    else:
        config = copy.deepcopy(model.hf_config) if model.hf_config else hf_config_for(model)
    arch = _check_config_fits(model, config, where=str(source_dir or "the model's config"))
    dtype = model.model.embed_tokens.weight.dtype
    config["dtype"] = str(dtype).removeprefix("torch.")
    if "torch_dtype" in config:
        config["torch_dtype"] = config["dtype"]
    entries = list(_export_entries(model, arch, merge_lora=merge_lora))

    with atomic_dir(out, overwrite=overwrite) as temp:
        _write_weights(temp, entries, limit)
        write_json(temp / CONFIG_FILE, config)
        if source_dir is not None:
            _copy_files(Path(source_dir), temp, COPIED_FILES)
        for name, file in getattr(tokenizer, "export_files", {}).items():
            shutil.copyfile(file, temp / name)
    return out


@contextmanager
def atomic_dir(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir to fill; on success it replaces `out` in one rename, on error it is removed.

    A non-empty `out` is refused unless `overwrite`; then it is moved aside and deleted only after
    the new dir is in place.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CheckpointError(
            f"{out} already exists and is not empty; choose another dir or pass overwrite=True"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / f"{TEMP_PREFIX}{out.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        yield temp
        fsync_dir(temp)
        _replace_dir(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _check_config_fits(model: Transformer, config: dict[str, Any], where: str) -> HFArchitecture:
    """Refuse a config.json that describes another model (say, the wrong source_dir)."""
    name, kwargs = model_kwargs_from_hf_config(
        config, where=f"{where}: {CONFIG_FILE}", max_seq_len=model.max_seq_len
    )
    ours = model.build_args
    for key, value in {"qkv_bias": False, "qk_norm": False, **kwargs}.items():
        if key == "qkv_bias" and ours["attention_bias"]:
            continue  # attention_bias already puts biases on q/k/v
        if ours[key] != value:
            raise CheckpointError(
                f"{where}: {CONFIG_FILE} describes another model: {key} is {value!r} there but"
                f" {ours[key]!r} in the model"
            )
    return HF_ARCHITECTURES[name]


# An exported tensor: its checkpoint name, size in bytes and a function that makes it.
_Entry = tuple[str, int, Callable[[], Tensor]]


def _export_entries(
    model: Transformer, arch: HFArchitecture, *, merge_lora: bool = True
) -> Iterator[_Entry]:
    """The checkpoint's tensors in model order, each made only when its shard is written, with
    LoRA updates merged in (or, with `merge_lora=False`, the dense base weights under them) and
    fused architectures' parts concatenated."""
    state = model.state_dict(keep_vars=True)
    lora = {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}
    done: set[str] = set()
    for name in state:
        path, _, leaf = name.rpartition(".")
        if name in done or path.endswith((".lora_a", ".lora_b")):
            continue
        if leaf == "magnitude" and path in lora:  # DoRA: already inside the merged weight
            continue
        key, group = _fuse_name(name, arch)
        done.update(group)
        makers = []
        for part in group:
            module = lora.get(part.rpartition(".")[0])
            if module is not None and leaf == "weight" and not merge_lora:
                makers.append(_base(module))
            elif module is not None and leaf == "weight" and not module.merged:
                makers.append(_merged(module))
            else:
                makers.append(_dense(state[part]))
        size = sum(state[part].numel() * state[part].element_size() for part in group)
        yield key, size, makers[0] if len(makers) == 1 else _cat(makers)


def _merged(module: LoRALinear) -> Callable[[], Tensor]:
    """weight + the LoRA update, added in fp32 and rounded once to the weight's dtype."""

    def make() -> Tensor:
        with torch.no_grad():
            merged = module.weight.float() + module.delta_weight().float()
        return merged.to(module.weight.dtype)

    return make


def _dense(tensor: Tensor) -> Callable[[], Tensor]:
    """The tensor as stored, a quantized (NF4) base weight dequantized."""
    return lambda: dense_weight(tensor.detach())


def _base(module: LoRALinear) -> Callable[[], Tensor]:
    """The frozen base weight under the adapter, dequantized if it is stored in NF4."""

    def make() -> Tensor:
        if module.merged:
            raise ValueError("the LoRA layers are merged; unmerge them to export the base model")
        dtype = module.lora_a.weight.dtype
        return dense_weight(module.weight.detach()).to(dtype)

    return make


def _cat(makers: list[Callable[[], Tensor]]) -> Callable[[], Tensor]:
    return lambda: torch.cat([make() for make in makers], dim=0)


def _write_weights(folder: Path, entries: list[_Entry], limit: int) -> None:
    """Write the weights as `model.safetensors`, or as shards with an index when they exceed
    `limit` bytes.

    huggingface_hub's splitter decides the shards, so file names, order and the index match what
    transformers' `save_pretrained` writes. Its generic form is used because our tensors are made
    only when their shard is written: it needs just each entry's size.
    """
    by_name = {entry[0]: entry for entry in entries}
    split = split_state_dict_into_shards_factory(
        by_name,
        get_storage_size=lambda entry: entry[1],
        filename_pattern=_SHARD_PATTERN,
        max_shard_size=limit,
    )
    for file, names in split.filename_to_tensors.items():
        _write_shard(folder / file, [by_name[name] for name in names])
    if split.is_sharded:
        weight_map = dict(sorted(split.tensor_to_filename.items()))
        write_json(folder / INDEX_FILE, {"metadata": split.metadata, "weight_map": weight_map})


def _write_shard(path: Path, shard: list[_Entry]) -> None:
    tensors = prepare_tensors({name: make() for name, _, make in shard})
    write_safetensors(tensors, path)


def _replace_dir(temp: Path, out: Path) -> None:
    """Rename `temp` to `out`; an existing `out` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / f"{TEMP_PREFIX}delete-{out.name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    os.rename(temp, out)
    fsync_dir(out.parent)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


# -- model -> config.json ----------------------------------------------------------------------------


def hf_config_for(model: Transformer) -> dict[str, Any]:
    """A config.json dict transformers loads as the same model (for built-in and other models
    built with `llama(...)`): a LlamaConfig, or Qwen2's / Qwen3's for q/k/v biases / q/k norms."""
    args = model.build_args
    if args["qk_norm"]:
        if args["qkv_bias"] and not args["attention_bias"]:
            raise ValueError("q/k norms with biases on q/k/v only match no transformers model")
        name = "Qwen3ForCausalLM"
    elif args["qkv_bias"] and not args["attention_bias"]:
        name = "Qwen2ForCausalLM"
    else:
        name = "LlamaForCausalLM"
    arch = HF_ARCHITECTURES[name]
    config: dict[str, Any] = {"architectures": [name], "model_type": arch.model_type}
    for kwarg, key in HF_CONFIG_KEYS.items():
        if kwarg not in arch.fixed:
            config[key] = args[kwarg]
    config.update(arch.requires)
    # transformers 5 reads rope_parameters; rope_theta / rope_scaling are for transformers 4.
    rope = {"rope_type": "default", **(args["rope_scaling"] or {}), "rope_theta": args["rope_base"]}
    config["rope_parameters"] = rope
    config["rope_theta"] = args["rope_base"]
    if args["rope_scaling"] is not None:
        config["rope_scaling"] = dict(args["rope_scaling"])
    config["dtype"] = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    return config


# -- helpers ---------------------------------------------------------------------------------------


def _dtype(value: torch.dtype | str | None, *, where: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    raise CheckpointError(f"{where}: {value!r} is not one of {', '.join(_DTYPES)}")


def _shard_bytes(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size must be bytes or like '2GB' / '500MB', got {size!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (config.json, an index, adapter_config.json).

    A missing file, invalid JSON or anything but an object is a CheckpointError naming `path`.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON: {one_line(error)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented, key-sorted JSON and fsync it."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _copy_files(source: Path, folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file():
            write_bytes(folder / name, (source / name).read_bytes())
