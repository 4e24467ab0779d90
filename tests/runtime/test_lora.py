"""LoRA by composition: identity at init, merge/unmerge, freezing, adapter state dicts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunegen.runtime.lora import (
    LoRALinear,
    apply_lora,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    unmerge_lora,
)
from tunegen.runtime.models import Transformer, llama

TARGETS = ("q_proj", "v_proj")


def small(tied: bool = True) -> Transformer:
    torch.manual_seed(0)
    return llama(
        vocab_size=64,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=48,
        max_seq_len=16,
        tie_embeddings=tied,
    ).eval()


def lora_model(targets=TARGETS, **kwargs) -> tuple[Transformer, list[str]]:
    model = small()
    paths = apply_lora(model, targets=targets, rank=4, alpha=8.0, **kwargs)
    return model, paths


def randomize_lora_b(model: torch.nn.Module) -> None:
    """Training would move B away from zero; do it by hand so the LoRA branch matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.weight.normal_(std=0.5)


TOKENS = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))


def test_lora_linear_matches_hand_computation() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(6, 5, rank=2, alpha=3.0, bias=True)
    with torch.no_grad():
        layer.lora_b.weight.normal_()
    x = torch.randn(4, 6)
    A, B = layer.lora_a.weight, layer.lora_b.weight
    expected = x @ layer.weight.T + layer.bias + (x @ A.T @ B.T) * (3.0 / 2)
    torch.testing.assert_close(layer(x), expected)
    assert layer.scaling == 1.5
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    # PEFT's init: A kaiming-uniform with a=sqrt(5), i.e. bound 1/sqrt(in_dim); B zero.
    assert A.abs().max() <= 1 / math.sqrt(6) and A.abs().max() > 0
    assert torch.equal(LoRALinear(6, 5, rank=2, alpha=1.0).lora_b.weight, torch.zeros(5, 2))


@pytest.mark.parametrize("bias", [False, True])
def test_lora_gradients_equal_autograds_on_the_formula(bias: bool) -> None:
    """The hand-written backward (`_LoRAFunction`) gives autograd's gradients of
    x @ W.T + b + scaling * (x @ A.T) @ B.T, in float64 (gradcheck) and on a layer in float32."""
    from tunegen.runtime.lora import _LoRAFunction

    def rand(*shape: int, grad: bool = True) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)

    b = rand(5, grad=False) if bias else None
    inputs = (rand(2, 3, 7), rand(5, 7, grad=False), b, rand(4, 7), rand(5, 4), 0.5)
    assert torch.autograd.gradcheck(_LoRAFunction.apply, inputs)

    layer = LoRALinear(16, 8, rank=4, alpha=8.0, bias=bias)
    torch.nn.init.normal_(layer.lora_b.weight)  # a non-zero update
    x = torch.randn(3, 5, 16, requires_grad=True)
    grads = []
    for forward in (
        layer,
        lambda x: (
            F.linear(x, layer.weight, layer.bias) + layer.lora_b(layer.lora_a(x)) * layer.scaling
        ),
    ):
        layer.zero_grad(), x.grad is None or x.grad.zero_()
        out = forward(x)
        out.square().sum().backward()
        grads.append([out.detach(), x.grad.clone(), layer.lora_a.weight.grad.clone()])
        grads[-1].append(layer.lora_b.weight.grad.clone())
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_a_base_weight_made_trainable_again_still_gets_its_gradient() -> None:
    layer = LoRALinear(16, 8, rank=4, alpha=8.0)
    layer.weight.requires_grad_(True)
    layer(torch.randn(3, 16)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_from_linear_shares_base_tensors_and_keeps_dtype() -> None:
    linear = torch.nn.Linear(8, 3, bias=True).to(torch.bfloat16)
    layer = LoRALinear.from_linear(linear, rank=2, alpha=4.0, dropout=0.0)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.weight.data_ptr() == linear.weight.data_ptr()
    assert layer.lora_a.weight.dtype == layer.lora_b.weight.dtype == torch.bfloat16
    assert layer.lora_a.weight.device == linear.weight.device
    assert not layer.lora_a.weight.is_meta and layer.lora_a.weight.abs().sum() > 0
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x), linear(x), rtol=0, atol=0)
    # The wrapper takes over the layer's train/eval mode (dropout must not switch on in eval).
    assert layer.training
    assert not LoRALinear.from_linear(linear.eval(), rank=2, alpha=4.0, dropout=0.5).training


def test_dropout_only_touches_lora_branch() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(16, 16, rank=4, alpha=4.0, dropout=0.9).train()
    x = torch.randn(3, 16)
    # B is zero: whatever dropout does to the LoRA input, the output is the base output.
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=0, atol=0)
    with torch.no_grad():
        layer.lora_b.weight.normal_()
    assert not torch.allclose(layer(x), layer(x))  # dropout is active in training...
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))  # ...and off in eval


def test_apply_lora_is_identity_at_init_and_keeps_base_keys() -> None:
    base = small()
    model, paths = lora_model()
    assert paths == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert all(isinstance(model.get_submodule(p), LoRALinear) for p in paths)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), base(TOKENS), rtol=0, atol=0)
    # Base keys are unchanged, so a base checkpoint loads with no remapping.
    sd = model.state_dict()
    base_sd = base.state_dict()
    assert set(base_sd) <= set(sd)
    for key, value in base_sd.items():
        assert torch.equal(sd[key], value), key
    missing, unexpected = model.load_state_dict(base_sd, strict=False)
    assert unexpected == []
    assert sorted(missing) == sorted(lora_state_dict(model))


def test_lora_state_dict_has_exactly_the_adapter_keys() -> None:
    model, paths = lora_model()
    expected = {f"{p}.{ab}.weight" for p in paths for ab in ("lora_a", "lora_b")}
    assert "model.layers.0.self_attn.q_proj.lora_a.weight" in expected
    sd = lora_state_dict(model)
    assert set(sd) == expected
    full = model.state_dict()
    assert set(full) - set(sd) == set(small().state_dict())
    assert sd["model.layers.1.self_attn.v_proj.lora_a.weight"].shape == (4, 32)
    assert sd["model.layers.1.self_attn.v_proj.lora_b.weight"].shape == (16, 4)


def test_lora_state_dict_round_trips() -> None:
    model, _ = lora_model()
    randomize_lora_b(model)
    other, _ = lora_model()
    other.load_state_dict(lora_state_dict(model), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(other(TOKENS), model(TOKENS), rtol=0, atol=0)


def test_merge_matches_unmerged_and_unmerge_restores() -> None:
    model, _ = lora_model(targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    randomize_lora_b(model)
    base_weight = model.model.layers[0].self_attn.q_proj.weight.clone()
    with torch.no_grad():
        unmerged = model(TOKENS)
        assert not torch.allclose(unmerged, small()(TOKENS), atol=1e-3)  # the LoRA branch matters
        merge_lora(model)
        merged_weight = model.model.layers[0].self_attn.q_proj.weight.clone()
        assert not torch.allclose(merged_weight, base_weight)
        torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-5)
        merge_lora(model)  # a second merge is a no-op, not a double update
        torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-5)
        unmerge_lora(model)
        torch.testing.assert_close(
            model.model.layers[0].self_attn.q_proj.weight, base_weight, rtol=0, atol=1e-6
        )
        torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-5)


def test_merged_layer_skips_lora_branch() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(8, 8, rank=2, alpha=2.0)
    with torch.no_grad():
        layer.lora_b.weight.normal_()
    x = torch.randn(3, 8)
    expected = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(F.linear(x, layer.weight), expected)
    torch.testing.assert_close(layer(x), expected)


def test_only_lora_trainable_and_only_lora_gets_gradients() -> None:
    model, _ = lora_model(targets=("q_proj", "gate_proj"))
    mark_only_lora_trainable(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model))
    assert len(trainable) == 2 * 2 * 2  # 2 layers x 2 targets x (A, B)
    model.train()
    logits = model(TOKENS)
    F.cross_entropy(logits.flatten(0, 1), TOKENS.flatten()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    q = model.model.layers[0].self_attn.q_proj
    assert q.lora_b.weight.grad.abs().sum() > 0  # B gets a gradient at step 0 ...
    assert q.lora_a.weight.grad.abs().sum() == 0  # ... A does not until B moves (B is zero)


def test_unknown_target_raises_naming_it() -> None:
    model = small()
    with pytest.raises(ValueError, match="qproj") as excinfo:
        apply_lora(model, targets=["q_proj", "qproj"], rank=4, alpha=8.0)
    assert "q_proj" not in str(excinfo.value).replace("qproj", "")
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing half-applied
    with pytest.raises(ValueError, match="embed_tokens"):  # exists, but is not an nn.Linear
        apply_lora(model, targets=["embed_tokens"], rank=4, alpha=8.0)
    with pytest.raises(ValueError):
        apply_lora(model, targets=[], rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, targets=["q_proj"], rank=0, alpha=8.0)
