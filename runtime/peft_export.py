"""LoRA adapters in PEFT's format, so `peft.PeftModel.from_pretrained(base, adapter_dir)` loads them.

An adapter dir holds `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
`base_model.model.<module path>.lora_A.weight` (rank, in) and `...lora_B.weight` (out, rank); PEFT
computes `scaling = lora_alpha / r` as `LoRALinear` does, so the weights carry over unchanged.

Checkpoints with fused projections (Phi-3's `qkv_proj`, `gate_up_proj`) get one adapter on the
fused module: A stacks the parts' A matrices and B places each part's B in its own rows and
columns, a rank-(sum of ranks) update that equals the parts' updates exactly. `rank_pattern` and
`alpha_pattern` record the larger rank and keep the scaling. Loading does the reverse, giving
every part the fused A and its rows of B.

DoRA adapters (`use_dora: true`) add each module's magnitude vector (out,) as
`base_model.model.<module path>.lora_magnitude_vector`, the name PEFT 0.18 saves. A fused
module's magnitude is its parts' magnitudes concatenated (each row belongs to one part; a part
without an adapter contributes its base weight's row norms, its DoRA identity), and loading gives
each part its rows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .config import expand_home
from .durable_io import prepare_tensors, read_safetensors, write_safetensors
from .errors import CheckpointError
from .hf_checkpoint import (
    atomic_dir,
    hf_config_for,
    model_kwargs_from_hf_config,
    read_json,
    save_hf_checkpoint,
    write_json,
)
from .lora import LoRALinear, dense_weight
from .models.builtin import BUILTIN_MODELS
from .models.llama import HF_ARCHITECTURES, HFArchitecture, Transformer

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "BASE_MODEL_DIR",
    "load_peft_adapter",
    "save_peft_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_MODEL_DIR = "base_model"
"""Where an adapter of a built-in model keeps that model as an HF checkpoint, for peft to load."""

_PREFIX = "base_model.model."
_MAGNITUDE = "lora_magnitude_vector"  # PEFT's saved name of a DoRA magnitude (no `.weight`)

# adapter_config.json settings that change what the weights mean; loading refuses other values.
_SUPPORTED = {
    "use_rslora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "layers_to_transform": None,
    "lora_bias": False,
}


class _Adapter(NamedTuple):
    """One PEFT module's adapter: A (rank, in), B (out, rank), alpha and DoRA's magnitude (out,)."""

    a: Tensor
    b: Tensor
    alpha: float
    magnitude: Tensor | None


def save_peft_adapter(
    model: Transformer, out_dir: str | Path, *, base_model: str, overwrite: bool = False
) -> Path:
    """Write the model's LoRA layers as a PEFT adapter for `base_model`. Returns `out_dir`; a
    non-empty one is replaced only with `overwrite=True`. The model is not modified.

    `base_model_name_or_path` is what `AutoPeftModelForCausalLM.from_pretrained(out_dir)` loads,
    from whatever the current dir then is: a local checkpoint dir is recorded as an absolute path,
    a built-in model (`tiny`) is written as an HF checkpoint into `out_dir/base_model/` (its base
    weights, adapters not merged) and that absolute path recorded, a hub name is kept as given.
    """
    lora = {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not lora:
        raise ValueError("the model has no LoRA layers to save (see runtime.lora.apply_lora)")
    use_dora = _use_dora(lora)
    arch = _arch(model)
    adapters: dict[str, _Adapter] = {}  # PEFT module path -> its adapter
    for path in lora:
        hf_path, parts = _fused_path(path, arch)
        if hf_path not in adapters:
            adapters[hf_path] = _fused_adapter(model, hf_path, parts, lora)
    # The most common (rank, alpha) is the default; the others go into PEFT's patterns.
    ranks = {path: adapter.a.shape[0] for path, adapter in adapters.items()}
    alphas = {path: adapter.alpha for path, adapter in adapters.items()}
    rank, alpha = Counter((ranks[p], alphas[p]) for p in adapters).most_common(1)[0][0]
    dropout = next(iter(lora.values())).dropout
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "target_modules": sorted({path.rpartition(".")[2] for path in adapters}),
        "rank_pattern": _patterns(ranks, rank),
        "alpha_pattern": _patterns(alphas, alpha),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": use_dora,
        "use_rslora": False,
    }
    tensors: dict[str, Tensor] = {}
    for path, adapter in adapters.items():
        tensors[f"{_PREFIX}{path}.lora_A.weight"] = adapter.a
        tensors[f"{_PREFIX}{path}.lora_B.weight"] = adapter.b
        if adapter.magnitude is not None:
            tensors[f"{_PREFIX}{path}.{_MAGNITUDE}"] = adapter.magnitude
    out = Path(out_dir)
    builtin = base_model in BUILTIN_MODELS
    config["base_model_name_or_path"] = _base_reference(base_model, out)
    with atomic_dir(out, overwrite=overwrite) as temp:
        write_safetensors(prepare_tensors(tensors), temp / ADAPTER_WEIGHTS)
        write_json(temp / ADAPTER_CONFIG, config)
        if builtin:
            save_hf_checkpoint(model, temp / BASE_MODEL_DIR, merge_lora=False)
    return out


def _base_reference(base_model: str, out: Path) -> str:
    """`base_model_name_or_path` for an adapter written to `out` (see `save_peft_adapter`)."""
    if base_model in BUILTIN_MODELS:
        return str(out.resolve() / BASE_MODEL_DIR)
    local = expand_home(base_model)
    if local.is_dir():
        return str(local.resolve())
    return base_model


def load_peft_adapter(model: Transformer, adapter_dir: str | Path) -> list[str]:
    """Wrap the model's layers named by a PEFT LoRA adapter and load its weights; return the
    wrapped module paths. The base weights are untouched (freeze them with
    `mark_only_lora_trainable`). Adapters for fused Phi-3 modules are split onto q/k/v, gate/up.
    A DoRA adapter (`use_dora: true`) gives DoRA layers with the saved magnitudes.
    """
    folder = Path(adapter_dir)
    config = _read_adapter_config(folder / ADAPTER_CONFIG)
    weights = read_safetensors(folder / ADAPTER_WEIGHTS)
    arch = _arch(model)
    modules = dict(model.named_modules())
    wrapped: list[str] = []
    adapters = _read_adapters(weights, folder / ADAPTER_WEIGHTS, use_dora=config["use_dora"])
    for hf_path, (a, b, magnitude) in adapters.items():
        alpha = _pattern_value(config["alpha_pattern"], hf_path, config["lora_alpha"])
        parts = _split_path(hf_path, arch)
        rows = 0
        for path in parts:
            linear = modules.get(path)
            if not isinstance(linear, nn.Linear) or isinstance(linear, LoRALinear):
                raise CheckpointError(
                    f"{folder / ADAPTER_WEIGHTS}: module {hf_path!r} is not a linear layer of"
                    " this model"
                )
            own = slice(rows, rows + linear.out_features)  # this part's rows of B and magnitude
            rows += linear.out_features
            if a.shape[1] != linear.in_features or b[own].shape[0] != linear.out_features:
                raise CheckpointError(
                    f"{folder / ADAPTER_WEIGHTS}: the adapter of {hf_path!r} has shapes"
                    f" {tuple(a.shape)}, {tuple(b.shape)}, which do not fit the model"
                )
            part_m = None if magnitude is None else magnitude[own]
            module = _wrap(linear, a, b[own], part_m, alpha=alpha, dropout=config["lora_dropout"])
            parent, _, name = path.rpartition(".")
            setattr(modules[parent] if parent else model, name, module)
            wrapped.append(path)
        if rows != b.shape[0]:
            raise CheckpointError(
                f"{folder / ADAPTER_WEIGHTS}: lora_B of {hf_path!r} has {b.shape[0]} rows, the"
                f" model's layers {rows}"
            )
    done = set(wrapped)
    return [path for path, _ in model.named_modules() if path in done]  # in model order


# -- helpers -----------------------------------------------------------------------------------


def _arch(model: Transformer) -> HFArchitecture:
    """The HF architecture whose module names the adapter uses (the loaded checkpoint's)."""
    config = model.hf_config or hf_config_for(model)
    name, _ = model_kwargs_from_hf_config(config, max_seq_len=model.max_seq_len)
    return HF_ARCHITECTURES[name]


def _wrap(
    linear: nn.Linear,
    a: Tensor,
    b: Tensor,
    magnitude: Tensor | None,
    *,
    alpha: float,
    dropout: float,
) -> LoRALinear:
    """`linear` wrapped in a LoRALinear (DoRA when there is a magnitude) holding these weights."""
    module = LoRALinear.from_linear(
        linear, rank=a.shape[0], alpha=alpha, dropout=dropout, use_dora=magnitude is not None
    )
    with torch.no_grad():
        module.lora_a.weight.copy_(a)
        module.lora_b.weight.copy_(b)
        if magnitude is not None:
            module.magnitude.copy_(magnitude)
    return module


def _fused_path(path: str, arch: HFArchitecture) -> tuple[str, list[str]]:
    """Our module path -> the checkpoint's module path and our paths fused into it."""
    for fused, parts in arch.fused.items():
        for part in parts:
            if path.endswith(f".{part}"):
                stem = path.removesuffix(part)
                return stem + fused, [stem + p for p in parts]
    return path, [path]


def _split_path(hf_path: str, arch: HFArchitecture) -> list[str]:
    for fused, parts in arch.fused.items():
        if hf_path.endswith(f".{fused}"):
            stem = hf_path.removesuffix(fused)
            return [stem + part for part in parts]
    return [hf_path]


def _use_dora(lora: Mapping[str, LoRALinear]) -> bool:
    """Whether the LoRA layers are DoRA layers; PEFT's config has one switch for all of them."""
    kinds = {module.magnitude is not None for module in lora.values()}
    if len(kinds) > 1:
        raise ValueError("PEFT needs all LoRA layers to be DoRA layers or none (use_dora differs)")
    return kinds.pop()


def _fused_adapter(
    model: Transformer, hf_path: str, parts: list[str], lora: Mapping[str, LoRALinear]
) -> _Adapter:
    """The adapter of one PEFT module: a part's own, or the block-diagonal fusion of parts with
    alpha raised so that alpha / (sum of ranks) is the parts' common scaling."""
    if len(parts) == 1:
        module = lora[parts[0]]
        magnitude = None if module.magnitude is None else module.magnitude.detach()
        a, b = module.lora_a.weight.detach(), module.lora_b.weight.detach()
        return _Adapter(a, b, module.alpha, magnitude)
    modules = dict(model.named_modules())
    with_lora = [lora[p] for p in parts if p in lora]
    if len({m.scaling for m in with_lora}) != 1:
        raise ValueError(
            f"{hf_path}: the fused layers' LoRA scalings (alpha / rank) differ; PEFT needs one"
        )
    a = torch.cat([m.lora_a.weight.detach() for m in with_lora], dim=0)  # (sum r, in)
    out_rows = [modules[p].out_features for p in parts]
    b = a.new_zeros(sum(out_rows), a.shape[0])  # (sum out, sum r)
    row = col = 0
    for part, rows in zip(parts, out_rows, strict=True):
        if part in lora:
            rank = lora[part].rank
            b[row : row + rows, col : col + rank] = lora[part].lora_b.weight.detach()
            col += rank
        row += rows
    magnitude = None
    if with_lora[0].magnitude is not None:
        magnitude = torch.cat([_part_magnitude(modules[p]) for p in parts])  # (sum out,)
    return _Adapter(a, b, with_lora[0].scaling * a.shape[0], magnitude)


def _part_magnitude(module: nn.Module) -> Tensor:
    """A fused part's rows of the DoRA magnitude: its own, or for a part without an adapter the
    norms that make its DoRA scale 1 (m = ||W + 0||, computed as `LoRALinear.weight_norm` does)."""
    if isinstance(module, LoRALinear):
        return module.magnitude.detach()
    weight = module.weight.detach()
    return torch.linalg.norm(dense_weight(weight), dim=1).to(weight.dtype)


def _patterns(values: Mapping[str, float], default: float) -> dict[str, float]:
    """PEFT rank/alpha patterns for the modules whose value differs from the default: keyed by
    layer name when all layers of that name agree, else by full module path."""
    by_leaf: dict[str, set[float]] = {}
    for path, value in values.items():
        by_leaf.setdefault(path.rpartition(".")[2], set()).add(value)
    patterns: dict[str, float] = {}
    for path, value in values.items():
        leaf = path.rpartition(".")[2]
        if len(by_leaf[leaf]) == 1 and value != default:
            patterns[leaf] = value
        elif len(by_leaf[leaf]) > 1 and value != default:
            patterns[re.escape(path)] = value
    return patterns


def _pattern_value(patterns: Mapping[str, Any], path: str, default: Any) -> Any:
    """PEFT's lookup: the first pattern matching the end of the module path at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _read_adapter_config(path: Path) -> dict[str, Any]:
    config = read_json(path)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for key, value in _SUPPORTED.items():
        got = config.get(key, value)
        if got != value and got not in ([], {}):
            raise CheckpointError(f"{path}: {key}={got!r} is not supported (only {value!r})")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)):
            raise CheckpointError(f"{path}: {key} is missing or not a number")
    if not isinstance(config.setdefault("use_dora", False), bool):
        raise CheckpointError(f"{path}: use_dora is not true or false")
    config.setdefault("lora_dropout", 0.0)
    config["alpha_pattern"] = config.get("alpha_pattern") or {}
    return config


# An adapter file's tensor names: PEFT saves `lora_A.weight`, `lora_B.weight` and
# `lora_magnitude_vector`; the in-memory names (with `.default`, the adapter name) are accepted too.
_KEY = re.compile(
    rf"{re.escape(_PREFIX)}(?P<path>.+)\."
    r"(?:lora_(?P<ab>[AB])(?:\.default)?\.weight|lora_magnitude_vector(?:\.default\.weight)?)"
)


def _read_adapters(
    weights: Mapping[str, Tensor], file: Path, *, use_dora: bool
) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """PEFT module path -> (lora_A, lora_B, DoRA magnitude or None), checking that each module has
    a matching A / B pair, and a magnitude exactly when the config says `use_dora`."""
    found: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        match = _KEY.fullmatch(key)
        if not match:
            raise CheckpointError(f"{file}: tensor {key!r} is not a LoRA A/B weight or magnitude")
        found.setdefault(match["path"], {})[match["ab"] or "M"] = tensor
    for path, tensors in found.items():
        if {"A", "B"} - set(tensors) or tensors["A"].shape[0] != tensors["B"].shape[1]:
            raise CheckpointError(f"{file}: module {path!r} lacks a matching lora_A / lora_B pair")
        if ("M" in tensors) != use_dora:
            state = "lacks a" if use_dora else "has a"
            raise CheckpointError(
                f"{file}: module {path!r} {state} DoRA magnitude but the adapter config says"
                f" use_dora={use_dora}"
            )
        if use_dora and tensors["M"].shape != tensors["B"].shape[:1]:
            raise CheckpointError(
                f"{file}: the DoRA magnitude of {path!r} has shape {tuple(tensors['M'].shape)},"
                f" not ({tensors['B'].shape[0]},)"
            )
    return {path: (t["A"], t["B"], t.get("M")) for path, t in found.items()}
