"""`load_trained_model(path)`: a run's final model and tokenizer, ready for generation or evaluation.

`path` is any of:

* a run dir (`checkpointer.output_dir`, e.g. `runs/lora`): its export `hf_model/` (a full model,
  or LoRA merged), else `peft_adapter/` (base + adapter), else its latest complete `step_*`
  checkpoint, rebuilt from the run's config saved beside the weights;
* a Hugging Face checkpoint dir (`config.json` + safetensors), or a PEFT adapter dir
  (`adapter_config.json`; its base is `base_model_name_or_path`);
* a built-in model name (`tiny`: random weights, for trying the commands).

The run's saved config (the latest `step_*/config.yaml`) also says how its data was formatted,
which `tunegen eval` and `tunegen generate --chat` use as their defaults. Its relative paths were
relative to where `tunegen run` ran; that is recovered from `checkpointer.output_dir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunegen.runtime.config import instantiate, resolve_config_paths
from tunegen.runtime.environment import resolve_device, seed_everything
from tunegen.runtime.errors import CheckpointError, TunegenError, one_line
from tunegen.runtime.hf_checkpoint import CONFIG_FILE, load_model, read_json
from tunegen.runtime.models import BUILTIN_MODELS, Transformer
from tunegen.runtime.peft_export import ADAPTER_CONFIG, BASE_MODEL_DIR, load_peft_adapter
from tunegen.runtime.tokenizers import Tokenizer, builtin_tokenizer, load_tokenizer

__all__ = ["LoadedModel", "load_trained_model", "run_config", "run_data_format"]

HF_EXPORT = "hf_model"
PEFT_EXPORT = "peft_adapter"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, its tokenizer, and where they came from."""

    model: Transformer
    tokenizer: Tokenizer
    source: str  # what was loaded, for messages: "runs/lora/peft_adapter (base tiny)"
    config: DictConfig | None  # the run's saved config (run dirs only)


def load_trained_model(
    path: str | Path, *, device: str = "auto", dtype: torch.dtype | str | None = None
) -> LoadedModel:
    """The model and tokenizer at `path` (see the module docstring), on `device`, in eval mode.

    Any problem (no such dir, nothing loadable in it) is a one-line `TunegenError`.
    """
    target = resolve_device(device)
    text = os.fspath(path)
    if isinstance(path, str) and text in BUILTIN_MODELS and not Path(text).exists():
        loaded = LoadedModel(load_model(text, dtype=dtype), builtin_tokenizer(text), text, None)
    else:
        loaded = _load_dir(Path(path), dtype)
    loaded.model.to(target).eval()
    return loaded


def run_config(run_dir: Path) -> DictConfig | None:
    """The config saved with the run's latest complete checkpoint, paths made usable from here."""
    from tunegen.runtime.checkpointing import Checkpointer

    latest = Checkpointer(output_dir=run_dir).latest()
    if latest is None or not (latest / "config.yaml").is_file():
        return None
    cfg = OmegaConf.create(OmegaConf.load(latest / "config.yaml"))
    resolve_config_paths(cfg, _run_cwd(run_dir, cfg))
    return cfg


def run_data_format(config: DictConfig | None) -> tuple[str | None, str | None]:
    """(format, template) of the run's training data: ("chat", "llama3"), ("text", None), ...

    The format comes from the dataset class (`InstructDataset` -> "instruct"); (None, None)
    without a config.
    """
    component = str(OmegaConf.select(config, "dataset._component_", default="")) if config else ""
    name = component.rpartition(".")[2]
    if not name.endswith("Dataset"):
        return None, None
    template = OmegaConf.select(config, "dataset.template", default=None)
    return name.removesuffix("Dataset").lower(), None if template is None else str(template)


def _run_cwd(run_dir: Path, cfg: DictConfig) -> Path:
    """Where `tunegen run` ran: `run_dir` minus the relative `checkpointer.output_dir` it was."""
    output_dir = Path(str(OmegaConf.select(cfg, "checkpointer.output_dir", default="")))
    if output_dir.is_absolute() or not output_dir.parts:
        return Path.cwd()
    resolved = run_dir.resolve()
    depth = len(output_dir.parts)
    if resolved.parts[-depth:] == output_dir.parts:
        return Path(*resolved.parts[:-depth])
    return Path.cwd()


def _load_dir(path: Path, dtype: torch.dtype | str | None) -> LoadedModel:
    if not path.is_dir():
        builtin = ", ".join(BUILTIN_MODELS)
        raise TunegenError(
            f"{path}: no such dir (give a run dir, a Hugging Face checkpoint dir, a PEFT adapter"
            f" dir or a built-in model: {builtin})"
        )
    if (path / CONFIG_FILE).is_file() or (path / ADAPTER_CONFIG).is_file():
        # An export inside a run dir (runs/lora/peft_adapter) still has its run's config.
        config = run_config(path.parent)
        if (path / CONFIG_FILE).is_file():
            return _load_hf(path, dtype, config)
        return _load_adapter(path, dtype, config)
    config = run_config(path)
    if (path / HF_EXPORT / CONFIG_FILE).is_file():
        return _load_hf(path / HF_EXPORT, dtype, config)
    if (path / PEFT_EXPORT / ADAPTER_CONFIG).is_file():
        return _load_adapter(path / PEFT_EXPORT, dtype, config)
    if config is not None:
        return _load_step(path, config, dtype)
    raise TunegenError(
        f"{path}: no model in it (expected a run dir with {HF_EXPORT}/, {PEFT_EXPORT}/ or a"
        f" step_* checkpoint, a Hugging Face checkpoint dir with {CONFIG_FILE}, or a PEFT"
        f" adapter dir with {ADAPTER_CONFIG})"
    )


def _load_hf(folder: Path, dtype: Any, config: DictConfig | None) -> LoadedModel:
    model = load_model(folder, dtype=dtype)
    return LoadedModel(model, _tokenizer(folder, config), str(folder), config)


def _load_adapter(folder: Path, dtype: Any, config: DictConfig | None) -> LoadedModel:
    """Base model (`base_model_name_or_path`) + the PEFT adapter in `folder`."""
    base = str(read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path") or "")
    base_dir = Path(base) if Path(base).is_absolute() else folder / base
    if base in BUILTIN_MODELS and not base_dir.is_dir():
        model, tokenizer = load_model(base, dtype=dtype), builtin_tokenizer(base)
    elif base and base_dir.is_dir():
        model = load_model(base_dir, dtype=dtype)
        builtin = _builtin_like(model) if base_dir.name == BASE_MODEL_DIR else None
        if builtin is not None and config is None:  # a built-in base, saved with the adapter
            tokenizer = builtin_tokenizer(builtin)
        else:
            tokenizer = _tokenizer(folder, config, fallback=base_dir)
    else:
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG}: base model {base!r} is not a local dir or built-in"
            " model; base_model_name_or_path must point at the base checkpoint dir"
        )
    load_peft_adapter(model, folder)
    return LoadedModel(model, tokenizer, f"{folder} (base {base})", config)


def _load_step(run_dir: Path, config: DictConfig, dtype: Any) -> LoadedModel:
    """The latest `step_*` checkpoint: the config's model (and adapters) with its weights.

    Built as the recipe builds it: seeded first, so a built-in base gets the same random
    weights. A QLoRA base is loaded unquantized (full precision), which is close but not equal
    to what training saw.
    """
    from tunegen.runtime.checkpointing import Checkpointer, load_weights_into, read_safetensors
    from tunegen.runtime.lora import apply_lora

    step_dir = Checkpointer(output_dir=run_dir).latest()
    assert step_dir is not None  # run_config found it
    seed_everything(int(OmegaConf.select(config, "environment.seed", default=0)))
    try:
        model = instantiate(config.model)
        tokenizer = instantiate(config.tokenizer)
    except TunegenError as error:
        raise CheckpointError(f"{step_dir / 'config.yaml'}: {one_line(error)}") from None
    if dtype is not None:
        model.to(dtype if isinstance(dtype, torch.dtype) else _DTYPES[dtype])
        model.model.reset_rope()
    files = sorted(step_dir.glob("*.safetensors"))
    weights = read_safetensors(files[0])
    if "lora" in config:
        lora = config.lora
        apply_lora(
            model,
            targets=list(lora.targets),
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            use_dora=any(key.endswith(".magnitude") for key in weights),
        )
    load_weights_into(model, weights, strict="lora" not in config)
    return LoadedModel(model, tokenizer, str(step_dir), config)


def _builtin_like(model: Transformer) -> str | None:
    """The built-in model `model` has the sizes of, if any (its weights may differ)."""
    for name, build in BUILTIN_MODELS.items():
        with torch.device("meta"):
            if build().build_args == model.build_args:
                return name
    return None


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tokenizer(folder: Path, config: DictConfig | None, fallback: Path | None = None) -> Tokenizer:
    """The tokenizer saved in `folder` (or `fallback`), else the run config's."""
    for candidate in (folder, fallback):
        if candidate is not None and any((candidate / f).is_file() for f in _TOKENIZER_FILES):
            return load_tokenizer(candidate)
    if config is not None and "tokenizer" in config:
        return instantiate(config.tokenizer)
    raise CheckpointError(
        f"{folder}: no tokenizer in it (none of {', '.join(_TOKENIZER_FILES)}); copy the base"
        " model's tokenizer files there"
    )
