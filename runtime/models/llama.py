"""The Llama-family decoder (Llama 2/3, TinyLlama, SmolLM, Qwen2-style configurations) in one file.

The module tree mirrors Hugging Face's `LlamaForCausalLM` name for name, so `state_dict()` keys
are identical and an HF checkpoint loads with `load_state_dict` and no key remapping:

    model.embed_tokens
    model.layers.{i}.input_layernorm
    model.layers.{i}.self_attn.{q_proj,k_proj,v_proj,o_proj}
    model.layers.{i}.post_attention_layernorm
    model.layers.{i}.mlp.{gate_proj,up_proj,down_proj}
    model.norm
    lm_head                      (absent when the embeddings are tied)

RoPE uses HF's "rotate_half" layout (the two halves of each head are the rotation pairs), so HF
q/k weights need no permutation either. The RoPE cos/sin tables are non-persistent buffers: they
are recomputed from the sizes and never appear in a checkpoint.

Shapes in comments: B batch, T sequence, D model dim, H query heads, K key/value heads,
Hd head dim, F MLP hidden dim, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LINEAR_LAYER_NAMES", "Transformer", "llama"]

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


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias or mean subtraction."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 (as HF does) so bf16 activations do not lose the small variances.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, max_seq_len: int, base: float) -> tuple[Tensor, Tensor]:
    """Return the RoPE (cos, sin) tables, each (max_seq_len, head_dim), computed in fp32.

    Each frequency appears twice (once per half of the head), matching `rotate_half` below.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    positions = torch.arange(max_seq_len, dtype=torch.float)
    freqs = torch.outer(positions, inv_freq)  # (T, Hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, Hd)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """Map the halves (x1, x2) of the last dim to (-x2, x1): a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys (B, heads, T, Hd) by their position; cos/sin are (T, Hd)."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (n_kv_heads divides n_heads)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, bias: bool) -> None:
        super().__init__()
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, Hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, Hd)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, Hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # enable_gqa shares each key/value head among n_heads // n_kv_heads query heads without
        # materialising repeated copies. No padding mask is needed for right-padded batches:
        # with causal attention, padding at the end only influences its own positions.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, H, T, Hd) -> (B, T, H*Hd)
        return self.o_proj(y)  # (B, T, D)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, F)
        return self.down_proj(h)  # (B, T, D)


class DecoderLayer(nn.Module):
    """One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        hidden_dim: int,
        norm_eps: float,
        attention_bias: bool,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, norm_eps)
        self.self_attn = Attention(dim, n_heads, n_kv_heads, attention_bias)
        self.post_attention_layernorm = RMSNorm(dim, norm_eps)
        self.mlp = MLP(dim, hidden_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
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
        hidden_dim: int,
        max_seq_len: int,
        rope_base: float,
        norm_eps: float,
        attention_bias: bool,
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, n_heads, n_kv_heads, hidden_dim, norm_eps, attention_bias)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(dim, norm_eps)
        # When set (see `runtime.memory`), training recomputes each layer's activations in the
        # backward pass instead of storing them: less memory for about a third more compute.
        self.activation_checkpointing = False
        # Derived from the sizes, so kept out of the state dict (HF checkpoints do not have them).
        cos, sin = rope_tables(dim // n_heads, max_seq_len, rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)  # (B, T, D)
        # Cast to the activation dtype, as HF does; the tables themselves are computed in fp32.
        cos, sin = self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype)  # (T, Hd)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)  # (B, T, D)


class Transformer(nn.Module):
    """A Llama-family causal language model: token ids (B, T) in, next-token logits (B, T, V) out.

    Build it with `llama(...)`; the keyword arguments are documented there. With
    `tie_embeddings=True` there is no `lm_head` module (the attribute is None) and the output
    projection reuses `model.embed_tokens.weight`, which is exactly what HF saves for tied models.
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
    ) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        if (dim // n_heads) % 2 != 0:
            raise ValueError(f"head dim dim // n_heads ({dim // n_heads}) must be even for RoPE")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.model = Decoder(
            vocab_size=vocab_size,
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            hidden_dim=hidden_dim,
            max_seq_len=max_seq_len,
            rope_base=rope_base,
            norm_eps=norm_eps,
            attention_bias=attention_bias,
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

    def forward(self, tokens: Tensor) -> Tensor:
        """Return logits (B, T, V) for token ids (B, T); position t sees tokens 0..t only."""
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds max_seq_len {self.max_seq_len}"
            )
        x = self.model(tokens)  # (B, T, D)
        if self.lm_head is None:
            return F.linear(x, self.model.embed_tokens.weight)  # (B, T, V)
        return self.lm_head(x)  # (B, T, V)


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
) -> Transformer:
    """Build a randomly initialised Llama-family model (deterministic given torch's seed).

    Args map to HF's `LlamaConfig` as: vocab_size, dim=hidden_size, n_layers=num_hidden_layers,
    n_heads=num_attention_heads, n_kv_heads=num_key_value_heads, hidden_dim=intermediate_size,
    max_seq_len=max_position_embeddings, rope_base=rope_theta, norm_eps=rms_norm_eps,
    tie_embeddings=tie_word_embeddings, attention_bias. Only the default RoPE scaling is
    supported, and the MLP has no biases (HF's `mlp_bias=False`).
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
    )
