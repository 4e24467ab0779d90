"""tunegen's runtime: what generated recipes import. The public API for models in and out:

    load_model(path_or_name, *, dtype=None, max_seq_len=None) -> Transformer
    save_hf_checkpoint(model, out_dir, source_dir=None, *, max_shard_size="2GB", overwrite=False)
    save_peft_adapter(model, out_dir, *, base_model, overwrite=False)
    load_peft_adapter(model, adapter_dir)
    merge_lora(model)
    hf_config_for(model)

See docs/api.md. The names are imported on first use, so importing a light submodule (such as
`tunegen.runtime.preflight`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hf_checkpoint import hf_config_for, load_model, save_hf_checkpoint
    from .lora import merge_lora
    from .peft_export import load_peft_adapter, save_peft_adapter

__all__ = [
    "hf_config_for",
    "load_model",
    "load_peft_adapter",
    "merge_lora",
    "save_hf_checkpoint",
    "save_peft_adapter",
]

# Public name -> the submodule that defines it.
_EXPORTS = {
    "hf_config_for": "hf_checkpoint",
    "load_model": "hf_checkpoint",
    "load_peft_adapter": "peft_export",
    "merge_lora": "lora",
    "save_hf_checkpoint": "hf_checkpoint",
    "save_peft_adapter": "peft_export",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
