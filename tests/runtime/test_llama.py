"""The Llama decoder: shapes, causality, GQA, init, and logit parity with transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunegen.runtime.models import BUILTIN_MODELS, LINEAR_LAYER_NAMES, Transformer, llama, tiny

SMALL = {
    "vocab_size": 128,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "hidden_dim": 96,
    "max_seq_len": 32,
}


def small(**overrides) -> Transformer:
    torch.manual_seed(0)
    return llama(**{**SMALL, **overrides}).eval()


def expected_keys(n_layers: int, *, tied: bool, bias: bool = False) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(n_layers):
        p = f"model.layers.{i}"
        keys |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            keys.add(f"{p}.self_attn.{name}.weight")
            if bias:
                keys.add(f"{p}.self_attn.{name}.bias")
        keys |= {f"{p}.mlp.{name}.weight" for name in ("gate_proj", "up_proj", "down_proj")}
    if not tied:
        keys.add("lm_head.weight")
    return keys


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_output_shape_and_gqa(n_kv_heads: int) -> None:
    model = small(n_kv_heads=n_kv_heads)
    tokens = torch.randint(0, 128, (3, 10))
    logits = model(tokens)
    assert logits.shape == (3, 10, 128)
    assert logits.dtype == torch.float32
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (n_kv_heads * 16, 64)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_causal_changing_token_t_leaves_earlier_logits(n_kv_heads: int) -> None:
    model = small(n_kv_heads=n_kv_heads)
    tokens = torch.randint(0, 128, (2, 12))
    changed = tokens.clone()
    t = 7
    changed[:, t] = (changed[:, t] + 1) % 128
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=0)
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_right_padding_does_not_change_real_positions() -> None:
    model = small()
    tokens = torch.randint(1, 128, (1, 9))
    padded = torch.cat([tokens, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded)[:, :9], model(tokens), rtol=0, atol=1e-6)


def test_position_matters() -> None:
    """RoPE makes the same token at different positions produce different outputs."""
    model = small()
    logits = model(torch.full((1, 4), 5))
    assert not torch.allclose(logits[0, 1], logits[0, 2])


@pytest.mark.parametrize("tied", [False, True])
def test_state_dict_keys_match_hf_names(tied: bool) -> None:
    model = small(tie_embeddings=tied)
    assert set(model.state_dict()) == expected_keys(2, tied=tied)
    assert (model.lm_head is None) == tied
    assert all("rope" not in k for k in model.state_dict())  # RoPE tables are not persisted
    assert {name.rsplit(".", 1)[-1] for name, _ in model.named_buffers()} == {
        "rope_cos",
        "rope_sin",
    }


def test_attention_bias_adds_bias_keys() -> None:
    model = small(attention_bias=True)
    assert set(model.state_dict()) == expected_keys(2, tied=False, bias=True)


def test_linear_layer_names_are_the_models_linears() -> None:
    model = small(tie_embeddings=True)
    names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert names == set(LINEAR_LAYER_NAMES)


def test_tied_model_saves_with_safetensors(tmp_path) -> None:
    """safetensors refuses shared tensors, so a tied model must not have an lm_head key."""
    model = small(tie_embeddings=True)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    fresh = small(tie_embeddings=True)
    with torch.no_grad():
        fresh.model.embed_tokens.weight.zero_()
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    tokens = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)


def test_init_is_deterministic_and_hf_like() -> None:
    a, b = small(), small()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    q = a.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 0.02) < 0.002
    assert abs(a.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert torch.equal(a.model.norm.weight, torch.ones(64))
    assert torch.equal(a.model.layers[1].post_attention_layernorm.weight, torch.ones(64))
    biased = small(attention_bias=True)
    assert torch.equal(biased.model.layers[0].self_attn.q_proj.bias, torch.zeros(64))


def test_rejects_bad_sizes_and_long_input() -> None:
    with pytest.raises(ValueError, match="n_kv_heads"):
        small(n_kv_heads=3)
    with pytest.raises(ValueError, match="n_heads"):
        small(n_heads=5)
    with pytest.raises(ValueError, match="max_seq_len"):
        small()(torch.zeros(1, 33, dtype=torch.long))


def test_bf16_forward() -> None:
    model = small().to(torch.bfloat16)
    logits = model(torch.randint(0, 128, (2, 8)))
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


def test_tiny_builtin() -> None:
    torch.manual_seed(0)
    model = BUILTIN_MODELS["tiny"]()
    assert {"tiny": tiny} == BUILTIN_MODELS
    assert (model.vocab_size, model.max_seq_len) == (512, 512)
    assert model.lm_head is None
    assert sum(p.numel() for p in model.parameters()) == 3_082_496
    assert model(torch.randint(0, 512, (1, 5))).shape == (1, 5, 512)


# --- Parity with transformers.LlamaForCausalLM ---------------------------------------------------

transformers = pytest.importorskip("transformers")


def hf_pair(*, tied: bool, rope_theta: float = 10000.0, bias: bool = False, seed: int = 0):
    """A random HF Llama and our model built with the same sizes."""
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=rope_theta,
        tie_word_embeddings=tied,
        attention_bias=bias,
    )
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(config).eval()
    if bias:  # HF initialises biases to zero; make them matter
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(std=0.1)
    ours = llama(
        vocab_size=128,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=96,
        max_seq_len=32,
        rope_base=rope_theta,
        norm_eps=1e-6,
        tie_embeddings=tied,
        attention_bias=bias,
    ).eval()
    return hf, ours


def hf_state_dict(hf) -> dict[str, torch.Tensor]:
    """HF's in-memory state dict lists the tied lm_head too; its saved checkpoints do not."""
    sd = hf.state_dict()
    if hf.config.tie_word_embeddings:
        assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
        del sd["lm_head.weight"]
    return sd


@pytest.mark.parametrize(
    "tied, rope_theta, bias",
    [(False, 10000.0, False), (True, 10000.0, False), (False, 500000.0, False), (True, 1e6, True)],
)
def test_logits_match_hf(tied: bool, rope_theta: float, bias: bool) -> None:
    hf, ours = hf_pair(tied=tied, rope_theta=rope_theta, bias=bias)
    ours.load_state_dict(hf_state_dict(hf), strict=True)
    tokens = torch.randint(0, 128, (3, 32))
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = ours(tokens)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_hf_logits_differ_for_other_weights() -> None:
    """Guards the parity test: a model with different weights is far from HF's logits."""
    hf, ours = hf_pair(tied=False)
    tokens = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max() > 1e-3


def test_hf_saved_checkpoint_loads_strictly(tmp_path) -> None:
    """A tied model saved by HF has no lm_head key and loads into ours without remapping."""
    hf, ours = hf_pair(tied=True, seed=1)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    sd = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in sd
    ours.load_state_dict(sd, strict=True)
    tokens = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=0, atol=1e-5)


# -- the block's hand-written backward passes (RMSNorm, RoPE, SwiGLU) ---------------------------


def plain_block(layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The decoder block written with the textbook formulas, autograd's own backward."""
    import torch.nn.functional as F

    from tunegen.runtime.models.llama import rotate_half

    def norm(module, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + module.eps)
        return module.weight * x32.to(x.dtype)

    def rope(t):
        return t * cos + rotate_half(t) * sin

    attn, mlp = layer.self_attn, layer.mlp
    B, T, _ = x.shape
    h = norm(layer.input_layernorm, x)
    q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True, enable_gqa=True)
    x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
    h = norm(layer.post_attention_layernorm, x)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


def saved_bytes(fn, module: torch.nn.Module) -> int:
    """Bytes of the distinct activations (not `module`'s parameters) autograd keeps for the
    backward pass of `fn()`."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_backward_equals_autograds_and_saves_a_third_less(dtype: torch.dtype) -> None:
    model = small(n_layers=1).train().to(dtype)
    layer = model.model.layers[0]
    cos, sin = (table[:16].to(dtype) for table in (model.model.rope_cos, model.model.rope_sin))
    x = torch.randn(2, 16, SMALL["dim"], dtype=dtype, requires_grad=True)
    grads = []
    for block in (lambda: layer(x, cos, sin), lambda: plain_block(layer, x, cos, sin)):
        layer.zero_grad(), x.grad is None or x.grad.zero_()
        out = block()
        out.float().square().sum().backward()
        grads.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    tolerance = (
        {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    )
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain, **tolerance)
    fused_bytes = saved_bytes(lambda: layer(x, cos, sin), layer)
    plain_bytes = saved_bytes(lambda: plain_block(layer, x, cos, sin), layer)
    # RMSNorm keeps its input and a per-row scale; the MLP keeps gate and up, not silu's output
    # or the down projection's input.
    assert fused_bytes <= 0.7 * plain_bytes, (fused_bytes, plain_bytes)


def test_block_pieces_pass_gradcheck_in_float64() -> None:
    from tunegen.runtime.models.llama import (
        _RMSNormFunction,
        _SwiGLUDownFunction,
        _SwiGLUFunction,
    )

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(_RMSNormFunction.apply, (rand(2, 3, 8), rand(8), 1e-6))
    assert torch.autograd.gradcheck(_SwiGLUFunction.apply, (rand(3, 7), rand(3, 7)))
    gate_up_weight = (rand(2, 3, 7), rand(2, 3, 7), rand(5, 7))
    assert torch.autograd.gradcheck(_SwiGLUDownFunction.apply, gate_up_weight)
    frozen_weight = (rand(2, 3, 7), rand(2, 3, 7), rand(5, 7).detach())
    assert torch.autograd.gradcheck(_SwiGLUDownFunction.apply, frozen_weight)


@pytest.mark.parametrize("wrap", ["lora", "frozen"])
def test_mlp_with_an_adapter_or_a_frozen_down_projection_equals_the_formula(wrap: str) -> None:
    """down_proj wrapped by LoRA goes through its own module; a frozen plain one through the
    fused function without a weight gradient. Both compute the textbook MLP."""
    import torch.nn.functional as F

    from tunegen.runtime.lora import apply_lora

    model = small(n_layers=1).train()
    mlp = model.model.layers[0].mlp
    if wrap == "lora":
        apply_lora(model, targets=["down_proj"], rank=4, alpha=8.0)
        torch.nn.init.normal_(mlp.down_proj.lora_b.weight)  # a non-zero update
    else:
        mlp.down_proj.weight.requires_grad_(False)
    x = torch.randn(2, 5, SMALL["dim"], requires_grad=True)
    grads = []
    for forward in (mlp, lambda x: mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))):
        mlp.zero_grad(), x.grad is None or x.grad.zero_()
        out = forward(x)
        out.square().sum().backward()
        trained = [p.grad.clone() for p in mlp.parameters() if p.requires_grad]
        grads.append([out.detach(), x.grad.clone(), *trained])
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def _textbook_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Hd) + causal mask) v, each key head shared by H // K query heads."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    T = q.shape[2]
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("T", [1, 100, 256, 257, 300, 512, 700, 1024, 1025])
def test_causal_attention_in_query_chunks_equals_the_formula(T: int) -> None:
    """Long sequences go in query chunks on CPU (past 2 * CAUSAL_CHUNK): values and gradients
    equal the textbook causal attention at every length around the chunk edges."""
    from tunegen.runtime.models.llama import causal_attention

    gen = torch.Generator().manual_seed(T)
    # (B, T, heads, Hd) transposed, the layout Attention hands over
    q, k, v = (
        torch.randn(2, T, heads, 16, generator=gen, dtype=torch.float64).transpose(1, 2)
        for heads in (4, 2, 2)
    )
    grad = torch.randn(2, 4, T, 16, generator=gen, dtype=torch.float64)
    outputs, grads = [], []
    for fn in (causal_attention, _textbook_causal_attention):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*inputs)
        outputs.append(out)
        grads.append(torch.autograd.grad(out, inputs, grad))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for ours, reference in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_causal_attention_chunks_long_cpu_sequences_only(monkeypatch) -> None:
    """One SDPA call up to 2 * CAUSAL_CHUNK tokens and past CAUSAL_CHUNKED_UP_TO; one call per
    query chunk between."""
    from tunegen.runtime.models.llama import CAUSAL_CHUNK, CAUSAL_CHUNKED_UP_TO, causal_attention

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, *args, **kwargs):
        calls.append(q.shape[2])
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    for T in (2 * CAUSAL_CHUNK, 2 * CAUSAL_CHUNK + 1, CAUSAL_CHUNKED_UP_TO + 1):
        q = torch.randn(1, 2, T, 8)
        causal_attention(q, q, q)
    chunk = CAUSAL_CHUNK
    assert calls == [2 * chunk, chunk, chunk, 1, CAUSAL_CHUNKED_UP_TO + 1]


def test_causal_attention_in_chunks_bf16_is_close_to_one_fp32_call() -> None:
    from tunegen.runtime.models.llama import causal_attention

    q, k, v = (torch.randn(1, heads, 400, 32).div(2) for heads in (8, 4, 4))
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True
    )
    ours = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float()
    torch.testing.assert_close(ours, reference, rtol=0.05, atol=0.02)
