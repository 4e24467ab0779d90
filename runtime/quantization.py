"""NF4 base-weight quantization for QLoRA, on torchao's `NF4Tensor`.

QLoRA (Dettmers et al., 2023) fine-tunes a LoRA adapter on top of a base model whose frozen linear
weights are stored in 4 bits. The 4-bit format is NF4 ("normal float 4"): each block of
`block_size` consecutive weights is divided by its absolute maximum, and every scaled value is
rounded to the nearest of 16 fixed levels in [-1, 1] that are spaced like the quantiles of a normal
distribution (trained weights are roughly normal, so the levels sit where the values are). Two
4-bit indices share a byte. The per-block absmax scales are themselves quantized ("double
quantization"): their mean is subtracted and each group of `scaler_block_size` scales is stored as
int8 with one float factor, so a scale costs about 8 bits per 64 weights instead of 32. A weight
then costs about 0.5 + 1/64 bytes instead of 2 (bf16) or 4 (fp32).

Only the storage is 4-bit: `F.linear(x, nf4_weight)` dequantizes the weight to `x`'s dtype on the
fly (in the forward pass and again in the backward pass, for the gradient with respect to `x`),
so activations, the adapters and their gradients stay in full precision. The base weight gets no
gradient; the trainable parameters are the LoRA matrices (`lora_a`, `lora_b`, and a DoRA
`magnitude` if present), which this module never touches.

What is quantized, and why:

* every `nn.Linear` and every `LoRALinear` base weight: they hold almost all of the parameters;
* not the output projection `lm_head`, as in QLoRA: it is a single layer that every logit goes
  through, so it is kept exact;
* not a linear whose weight is tied to an embedding (the tied output projection), since the
  embedding lookup needs the dense table anyway and quantizing a shared tensor would change both;
* not a weight whose size does not split into whole blocks (`block_size` weights per block and
  `scaler_block_size` blocks per scaler group, i.e. a multiple of 64 * 256 = 16384 weights with
  the defaults): torchao requires it. Real model widths almost always are multiples of that;
* embeddings, norms and biases stay dense: they are small, or (embeddings) only ever indexed.

The defaults 64 / 256 are QLoRA's and torchtune's: a block of 64 keeps one outlier from flattening
many weights, and 256 scales per int8 group keeps the scale overhead near 1/8 bit per weight.

Order matters: move the model to its device and dtype first, then quantize. LoRA may be applied
before or after (`apply_lora` wraps an NF4 linear like a dense one); with DoRA, quantize first:
DoRA initialises its magnitude from the weight it sees, so a magnitude taken from the dense weight
does not match the quantized direction and the fresh adapter no longer computes the base model.
Afterwards `model.to(device)` keeps the weights in NF4, but a dtype conversion (`model.to(dtype)`,
`.float()`, `.bfloat16()`) must not be applied: with torchao 0.18 it relabels each NF4 weight's
dtype without converting its contents and attaches a full dense copy to it. For export, call
`dequantize_base_weights` first; then `merge_lora` (which adds into the weight in place) and
`save_hf_checkpoint` (safetensors holds only dense tensors) work as on an unquantized model.

torchao is imported lazily, on the first quantization, so importing this module is free. Its
import logs warnings that mean nothing here (optional compiled kernels for other formats that fail
to load on CPU-only machines, a deprecation notice from torch's pytree); exactly those log records
are dropped while it is imported.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .lora import LoRALinear

__all__ = [
    "NF4_LEVELS",
    "QuantizationReport",
    "dequantize_base_weights",
    "is_quantized",
    "quantize_base_weights",
    "weight_memory_bytes",
]

_NF4_MODULE = "torchao.quantization.quantize_.workflows.nf4.nf4_tensor"

#: The 16 NF4 levels, exactly as torchao 0.18 writes them (QLoRA's table rounded to 4 decimals).
NF4_LEVELS: tuple[float, ...] = (
    -1.0,
    -0.6962,
    -0.5251,
    -0.3949,
    -0.2844,
    -0.1848,
    -0.0911,
    0.0,
    0.0796,
    0.1609,
    0.2461,
    0.3379,
    0.4407,
    0.5626,
    0.7230,
    1.0,
)

#: Layers kept dense by name: the output projection, as in QLoRA.
_DENSE_NAMES = ("lm_head",)


# --- The report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizationReport:
    """What `quantize_base_weights` did.

    `quantized` and `skipped` are module paths (`skipped` maps each to the reason it stayed dense).
    `bytes_before` / `bytes_after` are `weight_memory_bytes(model)` before and after: everything
    the model holds, so adapters, embeddings and buffers are included on both sides.
    """

    quantized: list[str]
    skipped: dict[str, str]
    bytes_before: int
    bytes_after: int

    @property
    def ratio(self) -> float:
        """bytes_after / bytes_before (1.0 for an empty model)."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def summary(self) -> str:
        """One line for the training log; it says which layers stay dense and why."""
        return (
            f"NF4: {len(self.quantized)} linear weights, model weights"
            f" {_mib(self.bytes_before)} MiB -> {_mib(self.bytes_after)} MiB ({self.ratio:.2f}x)"
            f"{self._dense_note()}"
        )

    def _dense_note(self) -> str:
        """`; 1 left dense: lm_head (output projection, kept dense as in QLoRA: ...)`, at most three
        layers by name, grouped by reason."""
        if not self.skipped:
            return ""
        by_reason: dict[str, list[str]] = {}
        for path, reason in self.skipped.items():
            by_reason.setdefault(reason, []).append(path)
        parts = []
        for reason, paths in by_reason.items():
            names = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            parts.append(f"{names} ({reason})")
        return f"; {len(self.skipped)} left dense: {'; '.join(parts)}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


# --- torchao, imported quietly ----------------------------------------------------------------------

# Log records torchao's import emits that are noise for NF4, by logger: its compiled kernels
# (`_C*.so`, for mxfp8 / cutlass formats, or skipped altogether on an older torch) are not used by
# NF4, which is plain PyTorch, and torch's pytree warns that torchao registers an Enum the
# deprecated way. Both are `logging` warnings (torchao's logger has no handler, so Python's
# last-resort handler prints them; torch's logging prints the pytree one).
_IMPORT_NOISE: dict[str, Callable[[str], bool]] = {
    "torchao": lambda msg: (
        (msg.startswith("Failed to load ") and ".so" in msg)
        or msg.startswith("Skipping import of cpp extensions")
    ),
    "torch.utils._pytree": lambda msg: msg.startswith(
        "%s is an Enum subclass and is now natively supported by torch.compile"
    ),
}


class _DropRecords(logging.Filter):
    """A logger filter that drops the records whose message template `is_noise` matches."""

    def __init__(self, is_noise: Callable[[str], bool]) -> None:
        super().__init__()
        self.is_noise = is_noise

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and self.is_noise(record.msg))


@contextmanager
def _quiet_torchao_import() -> Iterator[None]:
    """Drop exactly the `_IMPORT_NOISE` records while the body runs; other records pass."""
    filters = [
        (logging.getLogger(name), _DropRecords(is_noise))
        for name, is_noise in _IMPORT_NOISE.items()
    ]
    for logger, record_filter in filters:
        logger.addFilter(record_filter)
    try:
        yield
    finally:
        for logger, record_filter in filters:
            logger.removeFilter(record_filter)


@cache
def _nf4() -> ModuleType:
    """torchao's NF4 module (`to_nf4`, `NF4Tensor`), imported on first use."""
    with _quiet_torchao_import():
        return importlib.import_module(_NF4_MODULE)


def is_quantized(tensor: object) -> bool:
    """Whether `tensor` is an NF4 tensor (a quantized base weight). Never imports torchao."""
    module = sys.modules.get(_NF4_MODULE)
    return module is not None and isinstance(tensor, module.NF4Tensor)


# --- Quantize and dequantize ----------------------------------------------------------------------


def quantize_base_weights(
    model: nn.Module, *, block_size: int = 64, scaler_block_size: int = 256
) -> QuantizationReport:
    """Replace, in place, each linear base weight with a frozen NF4 parameter.

    Covers every `nn.Linear` and every `LoRALinear` base weight, except `lm_head`, weights tied to
    an embedding and weights that do not split into whole blocks (see the module docstring); those
    stay dense and are listed in the report's `skipped` with the reason. Adapters are not touched.
    Call it after the model is on its device and in its dtype. Raises ValueError for bad block
    sizes, a meta-device weight or a LoRA layer whose update is merged into its weight.
    """
    _check_block_sizes(block_size, scaler_block_size)
    to_nf4 = _nf4().to_nf4
    bytes_before = weight_memory_bytes(model)
    embedding_paths = _embedding_storages(model)
    done: dict[int, nn.Parameter] = {}  # id(dense weight) -> its NF4 parameter, to keep ties
    quantized: list[str] = []
    skipped: dict[str, str] = {}
    with torch.no_grad():
        for path, module in _base_linears(model):
            weight = module.weight
            reason = _dense_reason(path, weight, embedding_paths, block_size, scaler_block_size)
            if reason is not None:
                skipped[path] = reason
                continue
            if weight.is_meta:
                raise ValueError(f"{path}.weight is on the meta device: load the weights first")
            if getattr(module, "merged", False):
                raise ValueError(
                    f"{path} has its LoRA update merged into the weight: unmerge before quantizing"
                )
            if id(weight) not in done:
                nf4 = to_nf4(weight.detach().contiguous(), block_size, scaler_block_size)
                done[id(weight)] = nn.Parameter(nf4, requires_grad=False)
            module.weight = done[id(weight)]
            quantized.append(path)
    return QuantizationReport(quantized, skipped, bytes_before, weight_memory_bytes(model))


def dequantize_base_weights(model: nn.Module) -> None:
    """Turn every NF4 weight back into a dense frozen parameter, in place (e.g. before export).

    The dense weight has the NF4 tensor's dtype (the dtype it was quantized from) and holds the
    quantized values: the 4-bit rounding is not undone. Weights shared by several modules stay
    shared. A model without NF4 weights is left as it is.
    """
    done: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if not is_quantized(param):
                    continue
                if id(param) not in done:
                    dense = param.get_original_weight().to(param.dtype)
                    done[id(param)] = nn.Parameter(dense, requires_grad=False)
                setattr(module, name, done[id(param)])


def _check_block_sizes(block_size: int, scaler_block_size: int) -> None:
    """NF4 packs two 4-bit values per byte, so a block holds an even number of weights."""
    for name, value in (("block_size", block_size), ("scaler_block_size", scaler_block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"NF4 {name} must be a positive integer, got {value!r}")
    if block_size % 2:
        raise ValueError(
            f"NF4 block_size must be even (two 4-bit values share a byte), got {block_size}"
        )


def _base_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every nn.Linear and LoRA layer, excluding the layers inside a LoRA layer
    (its adapters), in model order."""
    found: list[tuple[str, nn.Module]] = []
    lora_paths: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(f"{lora}.") for lora in lora_paths):
            continue  # lora_a / lora_b (and whatever else an adapter holds) stay dense
        if _is_lora(module):
            lora_paths.append(path)
            found.append((path, module))
        elif isinstance(module, nn.Linear):
            found.append((path, module))
    return found


def _is_lora(module: nn.Module) -> bool:
    """A LoRALinear, or any layer built like one (a `weight` plus `lora_a` / `lora_b` modules)."""
    if isinstance(module, LoRALinear):
        return True
    return isinstance(getattr(module, "lora_a", None), nn.Module) and isinstance(
        getattr(module, "lora_b", None), nn.Module
    )


def _embedding_storages(model: nn.Module) -> dict[tuple[str, int], str]:
    """Storage key of each embedding table -> the embedding's path, to recognise tied weights."""
    return {
        _storage_key(m.weight): path
        for path, m in model.named_modules()
        if isinstance(m, nn.Embedding) and not is_quantized(m.weight) and not m.weight.is_meta
    }


def _dense_reason(
    path: str,
    weight: Tensor,
    embedding_paths: dict[tuple[str, int], str],
    block_size: int,
    scaler_block_size: int,
) -> str | None:
    """Why the linear weight at `path` stays dense, or None if it is to be quantized."""
    if path.rpartition(".")[2] in _DENSE_NAMES:
        return (
            "output projection, kept dense as in QLoRA: its rounding error would reach every logit"
        )
    if is_quantized(weight):
        return "already NF4"
    if not weight.is_floating_point():
        return f"not a floating-point weight ({weight.dtype})"
    if not weight.is_meta and _storage_key(weight) in embedding_paths:
        return f"weight tied to the embedding {embedding_paths[_storage_key(weight)]}"
    group = block_size * scaler_block_size
    if weight.numel() % group:
        return (
            f"shape {tuple(weight.shape)} ({weight.numel()} weights) does not split into blocks of"
            f" {block_size} in groups of {scaler_block_size} (a multiple of {group} weights)"
        )
    return None


# --- Memory -----------------------------------------------------------------------------------------


def weight_memory_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, each storage counted once.

    An NF4 weight is counted by its inner tensors (4-bit codes, int8 scales, scale factors, mean
    and level table), any other tensor by its whole storage, so tied weights and views count once.
    Meta tensors hold nothing and count 0.
    """
    seen: dict[tuple[str, int], int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        for leaf in _dense_leaves(tensor):
            if leaf.device.type != "meta":
                seen[_storage_key(leaf)] = leaf.untyped_storage().nbytes()
    return sum(seen.values())


def _dense_leaves(tensor: Tensor) -> Iterator[Tensor]:
    """The plain tensors holding `tensor`'s data: itself, or a wrapper subclass's inner tensors."""
    if not is_traceable_wrapper_subclass(tensor):
        yield tensor
        return
    names, _ = tensor.__tensor_flatten__()
    for name in names:
        yield from _dense_leaves(getattr(tensor, name))
    try:  # a wrapper normally has no storage, but `model.to(dtype)` can attach a dense copy
        outer = tensor.untyped_storage()
        if outer.data_ptr():
            yield tensor
    except RuntimeError:  # "invalid python storage": the usual, storage-less wrapper
        pass


def _storage_key(tensor: Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())
