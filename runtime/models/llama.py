"""The Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3, Phi-3) in one file.

The module tree mirrors Hugging Face's `LlamaForCausalLM` name for name, so `state_dict()` keys
are identical and an HF checkpoint loads with `load_state_dict` and no key remapping:

    model.embed_tokens
    model.layers.{i}.input_layernorm
    model.layers.{i}.self_attn.{q_proj,k_proj,v_proj,o_proj}
    model.layers.{i}.post_attention_layernorm
    model.layers.{i}.mlp.{gate_proj,up_proj,down_proj}
    model.norm
    lm_head                      (absent when the embeddings are tied)

Qwen3 adds `self_attn.{q_norm,k_norm}` (an RMSNorm over each head). Phi-3 checkpoints fuse
`qkv_proj` and `gate_up_proj`; the model keeps them split and `HF_ARCHITECTURES` below says how to
split and re-fuse them, so every architecture shares one module tree.

RoPE uses HF's "rotate_half" layout (the two halves of each head are the rotation pairs), so HF
q/k weights need no permutation either. The RoPE cos/sin tables are non-persistent buffers: they
are recomputed from the sizes and never appear in a checkpoint.

`HF_ARCHITECTURES` maps each supported HF `architectures` name to the builder keyword arguments it
implies; `runtime.hf_checkpoint` reads config.json through it.

Shapes in comments: B batch, T sequence, D model dim, H query heads, K key/value heads,
Hd head dim, F MLP hidden dim, V vocab.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..weights import is_dense

__all__ = [
    "HF_ARCHITECTURES",
    "HF_CONFIG_KEYS",
    "LINEAR_LAYER_NAMES",
    "ROPE_TYPES",
    "HFArchitecture",
    "KVCache",
    "Transformer",
    "llama",
]

#: Attribute names of the linear layers LoRA may target (the spec validator checks against these).
LINEAR_LAYER_NAMES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

# HF's default `initializer_range`; matching it keeps from-scratch runs comparable to HF ones.
_INIT_STD = 0.02


# RMSNorm and the MLP are autograd Functions with hand-written backward passes. They compute
# what the plain formulas compute, but keep for the backward pass only what it needs (the input
# and a per-row scale; gate and up), where autograd would also keep the normalised copy, silu's
# output and the down projection's input: a third less activation memory per block
# (tests/runtime/test_llama.py checks values, gradients and the saved bytes against the formulas).


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _RMSNormFunction(torch.autograd.Function):
    """weight * (x / rms(x)), normalised in fp32; saves x and the per-row 1 / rms."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x32 = x.to(_at_least_fp32(x.dtype))
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, inv_rms)
        return weight * (x32 * inv_rms).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, inv_rms = ctx.saved_tensors
        normed = x.to(inv_rms.dtype) * inv_rms
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0)
            grad_weight = grad_weight.to(weight.dtype)
        grad_normed = (grad * weight).to(inv_rms.dtype)
        # d(x * r)/dx with r = rsqrt(mean(x^2)): r * (g - normed * mean(g * normed)).
        grad_x = inv_rms * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias or mean subtraction."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 (as HF does) so bf16 activations do not lose the small variances.
        return _RMSNormFunction.apply(x, self.weight, self.eps)


#: RoPE scaling types `rope_scaling={"rope_type": ...}` accepts, with the keys each one needs.
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rope_inv_freq(head_dim: int, base: float, scaling: Mapping[str, Any] | None = None) -> Tensor:
    """The head_dim / 2 rotation frequencies, fp32, optionally rescaled for long context.

    "linear" divides every frequency by `factor`. "llama3" (Llama 3.1) divides only the low
    frequencies (wavelengths beyond original_max_position_embeddings / low_freq_factor), keeps the
    high ones (below .../high_freq_factor) and blends smoothly in between, exactly as HF does.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    kind = "default" if scaling is None else scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


def rope_tables(
    head_dim: int, max_seq_len: int, base: float, scaling: Mapping[str, Any] | None = None
) -> tuple[Tensor, Tensor]:
    """Return the RoPE (cos, sin) tables, each (max_seq_len, head_dim), computed in fp32.

    Each frequency appears twice (once per half of the head), matching `rotate_half` below.
    """
    inv_freq = rope_inv_freq(head_dim, base, scaling)
    positions = torch.arange(max_seq_len, dtype=torch.float)
    freqs = torch.outer(positions, inv_freq)  # (T, Hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, Hd)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """Map the halves (x1, x2) of the last dim to (-x2, x1): a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys (B, heads, T, Hd) by their position; cos/sin are (T, Hd), or
    (B, 1, T, Hd) when every row has its own positions (packed documents)."""
    return x * cos + rotate_half(x) * sin


def document_mask(document_ids: Tensor) -> Tensor:
    """The (B, 1, T, T) boolean attention mask of packed rows: True where query t may see key s.

    A token sees the earlier tokens of its own document only (`document_ids` (B, T) numbers the
    documents of each row; padding has an id of its own, so it sees only padding). Every query
    sees at least itself, so no row of the softmax is empty.
    """
    T = document_ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    return (same & causal).unsqueeze(1)


def document_spans(document_ids: Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each run of equal ids: its documents, then its padding."""
    spans = []
    for ids in document_ids.tolist():
        starts = [0] + [t for t in range(1, len(ids)) if ids[t] != ids[t - 1]]
        spans.append(list(zip(starts, [*starts[1:], len(ids)], strict=True)))
    return spans


@dataclass(frozen=True)
class Documents:
    """Where the documents of packed rows lie, in the form the device's attention wants.

    On CPU, one `causal_attention` per document (`spans`) never computes the cross-document
    blocks and measured 2.5x faster than a masked call (bench/packed_attention.py); elsewhere
    one SDPA call takes the block-diagonal `mask`, so there is no per-document host loop.
    """

    mask: Tensor | None = None
    spans: list[list[tuple[int, int]]] | None = None

    @classmethod
    def of(cls, document_ids: Tensor) -> Documents:
        """The layout of `document_ids` (B, T), as `packed_collate` writes them."""
        if document_ids.device.type == "cpu":
            return cls(spans=document_spans(document_ids))
        return cls(mask=document_mask(document_ids))


def attend(q: Tensor, k: Tensor, v: Tensor, documents: Documents | None) -> Tensor:
    """Causal SDPA of q (B, H, T, Hd) over k, v (B, K, T, Hd), within each document if given.

    enable_gqa shares each key/value head among H // K query heads without materialising
    repeated copies. No padding mask is needed for right-padded batches: with causal
    attention, padding at the end only influences its own positions.
    """
    if documents is None:
        return causal_attention(q, k, v)
    if documents.mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=documents.mask, enable_gqa=True)
    return attend_per_document(q, k, v, documents.spans)


#: Query rows per chunk of a long causal sequence on CPU, and the longest sequence chunked (see
#: `causal_attention`).
CAUSAL_CHUNK = 128
CAUSAL_CHUNKED_UP_TO = 1024


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal SDPA of q (B, H, T, Hd) over k, v (B, K, T, Hd).

    On CPU, SDPA's flash kernel multiplies each block of queries with whole 512-key blocks and
    masks afterwards, so up to 512 tokens a causal call costs as much as a full one. Between
    2 * CAUSAL_CHUNK and CAUSAL_CHUNKED_UP_TO tokens the queries go in chunks, each attending
    only to the keys up to its own end (its band of the causal triangle, masked): about
    (n + 1) / (2n) of the work for n chunks. Forward + backward, 8 query heads of 64 over 4 key
    heads: 384 tokens 9.7 -> 7.3 ms, 512: 16.5 -> 9.8, 768: 24.4 -> 20.0, 1024: 38.3 -> 36.3;
    at 2048 the kernel's own skipping of whole blocks does as well (125 ms either way). W2
    steps (bench/compare.py's data, alternated in one process): packed full 0.96-0.98x, LoRA
    0.98-1.0x; 4 x 512 rows full 0.97x, LoRA 0.92x. Each row's softmax is over the same keys,
    so the result is the same up to rounding. Elsewhere, and under torch.compile, one call.
    """
    T = q.shape[2]
    chunked = 2 * CAUSAL_CHUNK < T <= CAUSAL_CHUNKED_UP_TO
    if q.device.type != "cpu" or not chunked or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    parts = []
    chunks = q.split(CAUSAL_CHUNK, dim=2)  # one cat in backward, where slices would add zeros
    for start, q_chunk in zip(range(0, T, CAUSAL_CHUNK), chunks, strict=True):
        end = start + q_chunk.shape[2]
        # The first chunk's keys are its own: plain causal, no mask.
        mask = _causal_chunk_mask(start, end, q.device) if start else None
        part = F.scaled_dot_product_attention(
            q_chunk,
            k[:, :, :end],
            v[:, :, :end],
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=True,
        )
        parts.append(part)
    return torch.cat(parts, dim=2)  # (B, H, T, Hd)


@functools.lru_cache(maxsize=512)
def _causal_chunk_mask(start: int, end: int, device: torch.device) -> Tensor:
    """(end - start, end) bool: query start + i sees keys 0 .. start + i."""
    return torch.ones(end - start, end, dtype=torch.bool, device=device).tril(diagonal=start)


# torch.compile must not trace this loop: its Python spans change with every batch, so each
# batch would compile a graph of its own. Left out of the graph, a compiled block compiles once
# and calls the loop eagerly.
@torch.compiler.disable
def attend_per_document(
    q: Tensor, k: Tensor, v: Tensor, spans: list[list[tuple[int, int]]]
) -> Tensor:
    """One `causal_attention` per document of each row (`Documents.spans`): the cross-document
    blocks are never computed.

    The documents are taken with `unbind` and `split`, whose backward passes are one `stack`
    and one `cat`. Sliced out one by one (`q[b, :, s:e]`), each slice's backward would fill a
    zero tensor of q's whole size and add it up: that measured 1.4x this loop's time.
    """
    rows = []
    for q_row, k_row, v_row, row_spans in zip(
        q.unbind(0), k.unbind(0), v.unbind(0), spans, strict=True
    ):
        sizes = [end - start for start, end in row_spans]
        parts = [
            causal_attention(q_doc[None], k_doc[None], v_doc[None])
            for q_doc, k_doc, v_doc in zip(
                q_row.split(sizes, dim=1),
                k_row.split(sizes, dim=1),
                v_row.split(sizes, dim=1),
                strict=True,
            )
        ]
        rows.append(torch.cat(parts, dim=2))  # (1, H, T, Hd)
    return torch.cat(rows, dim=0)  # (B, H, T, Hd)


class LayerKV:
    """One layer's slice of a `KVCache`: its preallocated keys and values (B, K, S, Hd)."""

    def __init__(self, cache: KVCache, keys: Tensor, values: Tensor) -> None:
        self.cache = cache
        self.keys = keys
        self.values = values

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys and values (B, K, T, Hd); return all of them so far (B, K, L+T, Hd)."""
        start = self.cache.length
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """The keys and values of the tokens a model has seen, so decoding feeds one new token a step.

    Make one with `Transformer.new_kv_cache` and pass it to every `forward` call of one generation:
    the first call feeds the prompts, each later call the tokens just picked. Prompts of different
    lengths are left-padded: row b's first `left_pad[b]` slots are padding that no real token
    attends to, and its positions start at 0 after them, so every row computes exactly what it
    would alone. Slots fill from 0 to `max_len` (at most the model's `max_seq_len`).
    """

    def __init__(
        self,
        *,
        batch_size: int,
        max_len: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        left_pad: Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.layers = [
            LayerKV(
                self,
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(n_layers)
        ]
        self.max_len = max_len
        self.left_pad = left_pad.to(device)  # (B,)
        self.length = 0  # slots filled so far

    def positions(self, T: int) -> Tensor:
        """RoPE positions (B, T) of the next T slots: the slot index minus the row's padding."""
        slots = torch.arange(self.length, self.length + T, device=self.left_pad.device)
        return (slots[None, :] - self.left_pad[:, None]).clamp(min=0)

    def attention_mask(self, T: int) -> Tensor:
        """(B, 1, T, L+T): the next T slots see earlier and own slots, never a row's padding.

        A padding slot also sees itself, so no softmax row is empty (its output is never read).
        """
        slots = torch.arange(self.length + T, device=self.left_pad.device)  # keys (L+T,)
        query = slots[self.length :, None]  # (T, 1)
        causal = slots[None, :] <= query  # (T, L+T)
        real = slots[None, :] >= self.left_pad[:, None]  # (B, L+T)
        mask = (causal[None] & real[:, None, :]) | (slots[None, :] == query)[None]
        return mask[:, None]  # (B, 1, T, L+T)

    def keep(self, rows: Tensor) -> None:
        """Keep only `rows` (indices into the batch), e.g. those that have not finished yet."""
        for layer in self.layers:
            layer.keys = layer.keys[rows]
            layer.values = layer.values[rows]
        self.left_pad = self.left_pad[rows]


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (n_kv_heads divides n_heads).

    `qkv_bias` puts biases on q/k/v only (Qwen2); `attention_bias` on all four projections.
    `qk_norm` RMS-normalises each query and key head before RoPE (Qwen3).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        attention_bias: bool,
        qkv_bias: bool,
        qk_norm: bool,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        in_bias = attention_bias or qkv_bias
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=in_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=in_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=in_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=attention_bias)
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        documents: Documents | None = None,
        kv: tuple[LayerKV, Tensor] | None = None,
    ) -> Tensor:
        """Attend causally, or, given packed `documents`, within each document only.

        Given `kv` (this layer's cache and the step's attention mask, see `KVCache`), x holds only
        the new tokens: their keys and values join the cache and they attend to all of it.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # (B, T, H, Hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, K, Hd)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, Hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, Hd), (B, K, T, Hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is None:
            y = attend(q, k, v, documents)
        else:
            layer_kv, mask = kv
            k, v = layer_kv.extend(k, v)  # (B, K, L+T, Hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, H, T, Hd) -> (B, T, H*Hd)
        return self.o_proj(y)  # (B, T, D)


def _swiglu_grads(
    grad_h: Tensor, gate: Tensor, up: Tensor, silu_gate: Tensor, *, reuse_grad_h: bool
) -> tuple[Tensor, Tensor]:
    """The gradients of h = silu(gate) * up with respect to gate and up, given dL/dh.

    With `reuse_grad_h` (a temporary the caller made), grad_h's memory holds grad_h * up: one
    (B, T, F) buffer fewer. autograd's own incoming gradient must not be written to.
    """
    grad_up = grad_h * silu_gate
    grad_h_up = grad_h.mul_(up) if reuse_grad_h else grad_h * up
    # torch's own fused silu derivative (fp32 inside for bf16), one pass over the tensor.
    grad_gate = torch.ops.aten.silu_backward(grad_h_up, gate)
    return grad_gate, grad_up


class _SwiGLUFunction(torch.autograd.Function):
    """silu(gate) * up, saving only gate and up (silu's output is recomputed in backward)."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        return _swiglu_grads(grad, gate, up, F.silu(gate), reuse_grad_h=False)


class _SwiGLUDownFunction(torch.autograd.Function):
    """(silu(gate) * up) @ weight.T, saving only gate and up.

    The down projection's input silu(gate) * up is as large as gate or up; a linear layer would
    keep it for its weight gradient. Here it is recomputed in backward from silu(gate), which
    the backward pass computes anyway, so the MLP keeps two of its three wide activations (one
    multiply more per backward pass).
    """

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate) * up, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        gate, up, weight = ctx.saved_tensors
        silu_gate = F.silu(gate)
        grad_weight = None
        if ctx.needs_input_grad[2]:
            h = (silu_gate * up).reshape(-1, gate.shape[-1])  # (B*T, F)
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ h  # (D, F)
        grad_h = grad @ weight  # (B, T, F)
        grad_gate, grad_up = _swiglu_grads(grad_h, gate, up, silu_gate, reuse_grad_h=True)
        return grad_gate, grad_up, grad_weight


def _is_dense_linear(module: nn.Module) -> bool:
    """A plain bias-free `nn.Linear` with a dense weight (not LoRA-wrapped, not quantized)."""
    return type(module) is nn.Linear and module.bias is None and is_dense(module.weight)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, F)
        if _is_dense_linear(self.down_proj):
            return _SwiGLUDownFunction.apply(gate, up, self.down_proj.weight)  # (B, T, D)
        # An adapter or a quantized weight on down_proj: its own module computes it.
        return self.down_proj(_SwiGLUFunction.apply(gate, up))  # (B, T, D)


class DecoderLayer(nn.Module):
    """One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        hidden_dim: int,
        norm_eps: float,
        attention_bias: bool,
        qkv_bias: bool,
        qk_norm: bool,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, norm_eps)
        self.self_attn = Attention(
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            attention_bias=attention_bias,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
        )
        self.post_attention_layernorm = RMSNorm(dim, norm_eps)
        self.mlp = MLP(dim, hidden_dim)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        documents: Documents | None = None,
        kv: tuple[LayerKV, Tensor] | None = None,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, documents, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embeddings, the stack of layers and the final norm: HF's `LlamaModel` (the `model.` prefix)."""

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        hidden_dim: int,
        max_seq_len: int,
        rope_base: float,
        rope_scaling: Mapping[str, Any] | None,
        norm_eps: float,
        attention_bias: bool,
        qkv_bias: bool,
        qk_norm: bool,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim,
                n_heads,
                n_kv_heads,
                head_dim,
                hidden_dim,
                norm_eps,
                attention_bias,
                qkv_bias,
                qk_norm,
            )
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(dim, norm_eps)
        # When set (see `runtime.memory`), training recomputes each layer's activations in the
        # backward pass instead of storing them: less memory for about a third more compute.
        self.activation_checkpointing = False
        self._rope = (head_dim, max_seq_len, rope_base, rope_scaling)
        self.reset_rope()

    def reset_rope(self) -> None:
        """(Re)compute the RoPE tables, e.g. after building on the meta device.

        They are derived from the sizes, so they are kept out of the state dict (HF checkpoints
        do not have them) and are always fp32.
        """
        cos, sin = rope_tables(*self._rope)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        tokens: Tensor,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        if cache is not None:
            return self._forward_cached(tokens, cache)
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)  # (B, T, D)
        # Cast to the activation dtype, as HF does; the tables themselves are computed in fp32.
        if position_ids is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, Hd)
        else:  # each row's own positions: (B, 1, T, Hd), broadcast over the heads
            cos, sin = self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        documents = None if document_ids is None else Documents.of(document_ids)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, documents, use_reentrant=False)
            else:
                x = layer(x, cos, sin, documents)
        return self.norm(x)  # (B, T, D)

    def _forward_cached(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """The new tokens' hidden states (B, T, D); their keys and values join `cache`."""
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)  # (B, T, D)
        positions = cache.positions(T)  # (B, T)
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (B, 1, T, Hd)
        mask = cache.attention_mask(T)  # (B, 1, T, L+T)
        for layer, layer_kv in zip(self.layers, cache.layers, strict=True):
            x = layer(x, cos, sin, None, (layer_kv, mask))
        cache.length += T
        return self.norm(x)  # (B, T, D)


class Transformer(nn.Module):
    """A Llama-family causal language model: token ids (B, T) in, next-token logits (B, T, V) out.

    Build it with `llama(...)`; the keyword arguments are documented there and kept in
    `build_args`. With `tie_embeddings=True` there is no `lm_head` module (the attribute is None)
    and the output projection reuses `model.embed_tokens.weight`, which is exactly what HF saves
    for tied models. `hf_config` holds the config.json a model was loaded from (set by
    `runtime.hf_checkpoint.load_model`, None otherwise), so it can be saved in the same format.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        hidden_dim: int,
        max_seq_len: int,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
        attention_bias: bool = False,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        rope_scaling: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % n_heads != 0:
                raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
            head_dim = dim // n_heads
        if head_dim % 2 != 0:
            raise ValueError(f"head dim ({head_dim}) must be even for RoPE")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            kind = rope_scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling rope_type {kind!r} is not one of {', '.join(ROPE_TYPES)}"
                )
            missing = [key for key in ROPE_TYPES[kind] if key not in rope_scaling]
            if missing:
                raise ValueError(f"rope_scaling of type {kind!r} needs {', '.join(missing)}")
            unused = [key for key in rope_scaling if key not in ("rope_type", *ROPE_TYPES[kind])]
            if unused:  # e.g. rope_theta, which is rope_base here
                raise ValueError(f"rope_scaling of type {kind!r} takes no {', '.join(unused)}")
        self.build_args: dict[str, Any] = {
            "vocab_size": vocab_size,
            "dim": dim,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "hidden_dim": hidden_dim,
            "max_seq_len": max_seq_len,
            "rope_base": rope_base,
            "norm_eps": norm_eps,
            "tie_embeddings": tie_embeddings,
            "attention_bias": attention_bias,
            "head_dim": head_dim,
            "qkv_bias": qkv_bias,
            "qk_norm": qk_norm,
            "rope_scaling": rope_scaling,
        }
        self.hf_config: dict[str, Any] | None = None
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.model = Decoder(
            vocab_size=vocab_size,
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            hidden_dim=hidden_dim,
            max_seq_len=max_seq_len,
            rope_base=rope_base,
            rope_scaling=rope_scaling,
            norm_eps=norm_eps,
            attention_bias=attention_bias,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
        )
        self.lm_head = None if tie_embeddings else nn.Linear(dim, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise like HF Llama: weights ~ N(0, 0.02), biases 0, norm scales 1.

        Modules are visited in a fixed order, so the result depends only on torch's seed.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        tokens: Tensor,
        *,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int | None = None,
    ) -> Tensor:
        """Return logits (B, T, V) for token ids (B, T); position t sees tokens 0..t only.

        Packed rows (`runtime.data.collate.packed_collate`) pass `position_ids` (B, T), which
        restart at 0 with every document, and `document_ids` (B, T), which confine attention to
        each document: every document then gets exactly the logits it would get alone.

        Decoding passes a `cache` (`new_kv_cache`) instead: `tokens` are then only the tokens
        after those already in the cache, whose positions and padding the cache knows.
        `logits_to_keep=n` computes the logits of the last n positions only (B, n, V), which
        spares decoding a (B, T, V) tensor for a long prompt and a large vocabulary.
        """
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        seen = 0 if cache is None else cache.length
        limit = self.max_seq_len if cache is None else cache.max_len
        if seen + tokens.shape[1] > limit:
            raise ValueError(
                f"sequence length {seen + tokens.shape[1]} exceeds "
                f"{'max_seq_len' if cache is None else 'the cache max_len'} {limit}"
            )
        if cache is not None and (position_ids is not None or document_ids is not None):
            raise ValueError("a cached forward takes its positions from the cache")
        x = self.model(tokens, position_ids, document_ids, cache)  # (B, T, D)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:]  # (B, n, D)
        if self.lm_head is None:
            return F.linear(x, self.model.embed_tokens.weight)  # (B, T, V)
        return self.lm_head(x)  # (B, T, V)

    def hidden_states(self, tokens: Tensor, **documents: Tensor) -> Tensor:
        """The final hidden states (B, T, D), before the output projection: what a loss that
        projects chunk by chunk (`runtime.losses.ChunkedCrossEntropyLoss`) takes, with
        `output_weight`. `documents` are forward's `position_ids` / `document_ids`."""
        return self.model(tokens, documents.get("position_ids"), documents.get("document_ids"))

    @property
    def output_weight(self) -> Tensor:
        """The output projection's weight (V, D): `lm_head`'s, or the tied embeddings'."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def new_kv_cache(self, left_pad: Sequence[int], max_len: int) -> KVCache:
        """An empty cache for decoding len(left_pad) rows into at most `max_len` slots.

        `left_pad[b]` is how many padding tokens start row b (see `KVCache`). Keys and values
        take the dtype and device of the embeddings.
        """
        if max_len > self.max_seq_len:
            raise ValueError(f"cache max_len {max_len} exceeds max_seq_len {self.max_seq_len}")
        args = self.build_args
        weight = self.model.embed_tokens.weight
        return KVCache(
            batch_size=len(left_pad),
            max_len=max_len,
            n_layers=args["n_layers"],
            n_kv_heads=args["n_kv_heads"],
            head_dim=args["head_dim"],
            left_pad=torch.tensor(list(left_pad), dtype=torch.long),
            dtype=weight.dtype,
            device=weight.device,
        )


def llama(
    *,
    vocab_size: int,
    dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    hidden_dim: int,
    max_seq_len: int,
    rope_base: float = 10000.0,
    norm_eps: float = 1e-5,
    tie_embeddings: bool = False,
    attention_bias: bool = False,
    head_dim: int | None = None,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    rope_scaling: Mapping[str, Any] | None = None,
) -> Transformer:
    """Build a randomly initialised Llama-family model (deterministic given torch's seed).

    Args map to HF config.json keys as in `HF_CONFIG_KEYS`: vocab_size, dim=hidden_size,
    n_layers=num_hidden_layers, n_heads=num_attention_heads, n_kv_heads=num_key_value_heads,
    head_dim (None: dim // n_heads), hidden_dim=intermediate_size,
    max_seq_len=max_position_embeddings, rope_base=rope_theta, norm_eps=rms_norm_eps,
    tie_embeddings=tie_word_embeddings, attention_bias (biases on q/k/v/o, as Llama's flag).
    qkv_bias puts biases on q/k/v only (Qwen2); qk_norm adds Qwen3's per-head q/k RMSNorm.
    rope_scaling is None or a dict with a `rope_type` from `ROPE_TYPES` and that type's keys
    (Llama 3.1's {"rope_type": "llama3", "factor": 8.0, ...}). The MLP is SwiGLU without biases
    (HF's `hidden_act="silu"`, `mlp_bias=False`).
    """
    return Transformer(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=hidden_dim,
        max_seq_len=max_seq_len,
        rope_base=rope_base,
        norm_eps=norm_eps,
        tie_embeddings=tie_embeddings,
        attention_bias=attention_bias,
        head_dim=head_dim,
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        rope_scaling=rope_scaling,
    )


# --- Hugging Face config.json -> builder keyword arguments ----------------------------------------

#: Builder keyword argument -> the HF config.json key it is read from, for every architecture.
#: RoPE (`rope_base`, `rope_scaling`) is read from `rope_parameters` or `rope_theta`/`rope_scaling`.
HF_CONFIG_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "hidden_dim": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "attention_bias": "attention_bias",
}


@dataclass(frozen=True)
class HFArchitecture:
    """How one HF `architectures` name maps onto `llama(...)` and its checkpoint's tensor names."""

    model_type: str
    #: Values HF's config class assumes for keys a config.json may leave out (None for
    #: num_key_value_heads / head_dim means n_heads / dim // n_heads).
    defaults: Mapping[str, Any]
    #: Builder kwargs the architecture fixes whatever config.json says (Qwen2 always has q/k/v
    #: biases; Mistral has no attention_bias option).
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: config.json keys with the only value this file implements (missing keys count as that
    #: value); a checkpoint with another value is refused rather than silently computed wrongly.
    requires: Mapping[str, Any] = field(default_factory=dict)
    #: The config.json key that turns `sliding_window` on, or None when setting it suffices.
    sliding_window_switch: str | None = None
    #: Checkpoint module name -> our module names whose weights it concatenates along dim 0.
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_DEFAULTS = {
    "num_key_value_heads": None,
    "head_dim": None,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "rope_theta": 10000.0,
}

#: The HF `architectures` this file builds (Gemma 2 is not one: see docs/api.md).
HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "LlamaForCausalLM": HFArchitecture(
        model_type="llama",
        defaults=_DEFAULTS,
        requires={"hidden_act": "silu", "mlp_bias": False},
    ),
    "MistralForCausalLM": HFArchitecture(
        model_type="mistral",
        defaults=_DEFAULTS,
        fixed={"attention_bias": False},
        requires={"hidden_act": "silu"},
    ),
    "Qwen2ForCausalLM": HFArchitecture(
        model_type="qwen2",
        defaults=_DEFAULTS,
        fixed={"attention_bias": False, "qkv_bias": True},
        requires={"hidden_act": "silu"},
        sliding_window_switch="use_sliding_window",
    ),
    "Qwen3ForCausalLM": HFArchitecture(
        model_type="qwen3",
        defaults={**_DEFAULTS, "head_dim": 128},
        fixed={"qk_norm": True},
        requires={"hidden_act": "silu"},
        sliding_window_switch="use_sliding_window",
    ),
    "Phi3ForCausalLM": HFArchitecture(
        model_type="phi3",
        defaults={**_DEFAULTS, "rms_norm_eps": 1e-5},
        fixed={"attention_bias": False},
        requires={"hidden_act": "silu"},
        fused={
            "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
        },
    ),
}
