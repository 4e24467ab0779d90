"""DoRA: identity at init, equal to PEFT (layer, model, adapter files both ways), merge/unmerge,
disable_adapters, gradients, adapter state dicts and NF4 base weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import save_random_hf_model
from safetensors.torch import load_file

from tunegen.runtime import load_model, load_peft_adapter, save_peft_adapter
from tunegen.runtime.lora import (
    LoRALinear,
    apply_lora,
    dense_weight,
    disable_adapters,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    unmerge_lora,
)
from tunegen.runtime.models import Transformer, llama

# transformers 5.24 warns about its own deprecated name when peft 0.18.1 calls it.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENS = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))


def small() -> Transformer:
    torch.manual_seed(0)
    return llama(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=16
    ).eval()


def dora_model(*, use_dora: bool = True, dropout: float = 0.0) -> Transformer:
    """A small model with (Do)RA on every linear layer and moved B and magnitude, as if trained."""
    model = small()
    apply_lora(model, targets=ALL_LINEAR, rank=4, alpha=8.0, dropout=dropout, use_dora=use_dora)
    randomize(model, seed=1)
    return model


def randomize(model: torch.nn.Module, *, seed: int, std: float = 0.1) -> None:
    """Move every B and DoRA magnitude away from its init, as training would (PEFT's or ours)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("lora_b.weight", "lora_B.default.weight")):
                param.normal_(std=std)
            elif name.endswith(("magnitude", "lora_magnitude_vector.default.weight")):
                param.mul_(1 + 0.3 * torch.randn_like(param))


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


# -- the layer -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bias", "train"), [(False, False), (True, False), (True, True)])
def test_dora_layer_equals_peft_layer_with_gradients(peft, bias: bool, train: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 12, bias=bias)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, use_dora=True)
    theirs = peft.tuners.lora.Linear(
        copy.deepcopy(linear), "default", config, r=4, lora_alpha=8, lora_dropout=0.3, use_dora=True
    )
    ours = LoRALinear.from_linear(linear, rank=4, alpha=8.0, dropout=0.3, use_dora=True)
    randomize(theirs, seed=1, std=0.3)
    with torch.no_grad():
        ours.lora_a.weight.copy_(theirs.lora_A["default"].weight)
        ours.lora_b.weight.copy_(theirs.lora_B["default"].weight)
        ours.magnitude.copy_(theirs.lora_magnitude_vector["default"].weight)
    ours.train(train)
    theirs.train(train)
    x = torch.randn(3, 5, 16)
    grad_out = torch.randn(3, 5, 12)
    outputs = []
    for layer in (ours, theirs):
        torch.manual_seed(2)  # the same dropout mask for both
        out = layer(x)
        (out * grad_out).sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)
    assert (outputs[0] - linear(x)).abs().max() > 0.1  # the adapter matters
    # Equal gradients: in particular the weight norm is detached as in PEFT (paper, section 4.3).
    pairs = [
        (ours.lora_a.weight, theirs.lora_A["default"].weight),
        (ours.lora_b.weight, theirs.lora_B["default"].weight),
        (ours.magnitude, theirs.lora_magnitude_vector["default"].weight),
    ]
    for mine, peft_param in pairs:
        assert mine.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, peft_param.grad, rtol=0, atol=1e-5)


def test_dora_is_the_decomposed_weight() -> None:
    """y = x @ W'.T + b with W' = m * (W + sBA) / ||W + sBA||_row (bias not rescaled)."""
    torch.manual_seed(0)
    layer = LoRALinear(6, 5, rank=2, alpha=3.0, bias=True, use_dora=True)
    torch.testing.assert_close(layer.magnitude, layer.weight.norm(dim=1), rtol=0, atol=0)
    with torch.no_grad():
        layer.lora_b.weight.normal_()
        layer.magnitude.mul_(torch.rand(5) + 0.5)
    direction = layer.weight + 1.5 * layer.lora_b.weight @ layer.lora_a.weight
    decomposed = layer.magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), x @ decomposed.T + layer.bias, rtol=0, atol=1e-5)
    assert "use_dora=True" in repr(layer)
    assert LoRALinear(6, 5, rank=2, alpha=1.0).magnitude is None


def test_dora_at_init_is_exactly_the_base_model() -> None:
    base = small()
    model = small()
    paths = apply_lora(model, targets=ALL_LINEAR, rank=4, alpha=8.0, use_dora=True)
    assert len(paths) == 2 * len(ALL_LINEAR)
    q = model.model.layers[0].self_attn.q_proj
    assert q.magnitude.shape == (32,) and q.magnitude.requires_grad
    torch.testing.assert_close(q.magnitude, q.weight.norm(dim=1))
    torch.testing.assert_close(logits(model, TOKENS), logits(base, TOKENS), rtol=0, atol=0)


# -- merge, disable, train ---------------------------------------------------------------------


def test_dora_merge_equals_unmerged_and_unmerge_restores_weight() -> None:
    model = dora_model()
    q = model.model.layers[0].self_attn.q_proj
    base_weight = q.weight.clone()
    unmerged = logits(model, TOKENS)
    assert (unmerged - logits(small(), TOKENS)).abs().max() > 1e-2  # the adapter matters
    direction = q.weight + q.scaling * q.lora_b.weight @ q.lora_a.weight
    expected = q.magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True)

    merge_lora(model)
    torch.testing.assert_close(q.weight, expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, TOKENS), unmerged, rtol=0, atol=1e-5)
    merge_lora(model)  # a second merge is a no-op
    torch.testing.assert_close(logits(model, TOKENS), unmerged, rtol=0, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(q.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, TOKENS), unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_disable_adapters_computes_the_base_model_and_restores(use_dora: bool) -> None:
    model = dora_model(use_dora=use_dora)
    base = logits(small(), TOKENS)
    adapted = logits(model, TOKENS)
    assert (adapted - base).abs().max() > 1e-2
    with torch.no_grad(), disable_adapters(model):
        torch.testing.assert_close(model(TOKENS), base, rtol=0, atol=0)
        with pytest.raises(ValueError, match="disabled"):
            merge_lora(model)
    torch.testing.assert_close(logits(model, TOKENS), adapted, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"), disable_adapters(model):
        raise RuntimeError("boom")
    torch.testing.assert_close(logits(model, TOKENS), adapted, rtol=0, atol=0)

    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge"), disable_adapters(model):
        pass
    unmerge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"), disable_adapters(small()):
        pass


def test_gradients_reach_a_b_and_magnitude_not_the_base() -> None:
    model = dora_model(dropout=0.1).train()
    mark_only_lora_trainable(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model))
    assert "model.layers.0.mlp.down_proj.magnitude" in trainable
    out = model(TOKENS)
    F.cross_entropy(out.flatten(0, 1), TOKENS.flatten()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
        if name in trainable:
            assert p.grad.abs().sum() > 0, name


def test_lora_state_dict_carries_magnitudes_and_round_trips() -> None:
    model = dora_model()
    sd = lora_state_dict(model)
    assert sd["model.layers.1.self_attn.v_proj.magnitude"].shape == (16,)
    assert len(sd) == 2 * len(ALL_LINEAR) * 3
    other = small()
    apply_lora(other, targets=ALL_LINEAR, rank=4, alpha=8.0, use_dora=True)
    missing, unexpected = other.load_state_dict(sd, strict=False)
    assert unexpected == [] and not any("lora" in k or "magnitude" in k for k in missing)
    torch.testing.assert_close(logits(other, TOKENS), logits(model, TOKENS), rtol=0, atol=0)


def test_dora_over_an_nf4_base_weight() -> None:
    nf4 = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    torch.manual_seed(0)
    dense = torch.nn.Linear(128, 256, bias=False, dtype=torch.bfloat16)
    quantized = copy.deepcopy(dense)
    quantized.weight = torch.nn.Parameter(nf4.to_nf4(dense.weight.detach()), requires_grad=False)
    dequantized = quantized.weight.get_original_weight()
    assert type(dense_weight(quantized.weight)) is torch.Tensor  # what the norms and merges work on
    torch.testing.assert_close(dense_weight(quantized.weight), dequantized, rtol=0, atol=0)
    dense.weight.data.copy_(dequantized)  # the same numbers, as a plain tensor
    ours = LoRALinear.from_linear(quantized, rank=4, alpha=8.0, use_dora=True)
    reference = LoRALinear.from_linear(dense, rank=4, alpha=8.0, use_dora=True)
    torch.testing.assert_close(ours.magnitude, dequantized.norm(dim=1), rtol=0, atol=0.02)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    torch.testing.assert_close(ours(x), F.linear(x, quantized.weight), rtol=0, atol=0)
    with torch.no_grad():
        ours.lora_b.weight.normal_(std=0.1)
        reference.lora_a.weight.copy_(ours.lora_a.weight)
        reference.lora_b.weight.copy_(ours.lora_b.weight)
    torch.testing.assert_close(ours(x), reference(x), rtol=0.02, atol=0.02)
    assert (ours(x) - F.linear(x, quantized.weight)).abs().max() > 0.1


# -- PEFT adapter files ----------------------------------------------------------------------------

HF_TARGETS = {  # PEFT targets the checkpoint's (for Phi-3, fused) module names
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


@pytest.fixture(scope="module", params=list(HF_TARGETS))
def base_dir(request, tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return save_random_hf_model(tmp_path_factory.mktemp(request.param), request.param)


def hf_model(base_dir: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()


def test_peft_dora_adapter_loads_with_equal_logits(peft, base_dir: Path, tmp_path: Path) -> None:
    arch = json.loads((base_dir / "config.json").read_text())["model_type"]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=HF_TARGETS[arch], use_dora=True)
    theirs = peft.get_peft_model(hf_model(base_dir), config).eval()
    randomize(theirs, seed=3)
    theirs.save_pretrained(tmp_path / "adapter")

    ours = load_model(base_dir).eval()
    wrapped = load_peft_adapter(ours, tmp_path / "adapter")
    assert len(wrapped) == 2 * len(ALL_LINEAR)  # Phi-3's fused adapters land on every part
    assert all(ours.get_submodule(path).magnitude is not None for path in wrapped)
    tokens = torch.randint(0, 128, (2, 24))
    expected = logits(theirs, tokens)
    torch.testing.assert_close(logits(ours, tokens), expected, rtol=0, atol=1e-5)
    base = logits(hf_model(base_dir), tokens)
    assert (expected - base).abs().max() > 1e-2  # the adapter matters
    with disable_adapters(ours):
        torch.testing.assert_close(logits(ours, tokens), base, rtol=0, atol=1e-5)


def test_peft_loads_our_dora_adapter_with_equal_logits(
    peft, base_dir: Path, tmp_path: Path
) -> None:
    ours = load_model(base_dir)
    # q and v (not k), gate (not up): fused Phi-3 modules get base row norms for k and up.
    targets = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
    apply_lora(ours, targets=targets, rank=4, alpha=8.0, dropout=0.1, use_dora=True)
    randomize(ours.eval(), seed=4)
    out = save_peft_adapter(ours, tmp_path / "adapter", base_model=str(base_dir))

    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    tensors = load_file(out / "adapter_model.safetensors")
    fused = ours.hf_config["model_type"] == "phi3"
    qkv = "base_model.model.model.layers.0.self_attn." + ("qkv_proj" if fused else "q_proj")
    assert tensors[f"{qkv}.lora_magnitude_vector"].shape == ((64 + 2 * 32,) if fused else (64,))
    assert len([k for k in tensors if k.endswith(".lora_magnitude_vector")]) == 2 * (
        4 if fused else 5
    )

    tokens = torch.randint(0, 128, (2, 24))
    expected = logits(ours, tokens)
    theirs = peft.PeftModel.from_pretrained(hf_model(base_dir), out).eval()
    torch.testing.assert_close(logits(theirs, tokens), expected, rtol=0, atol=1e-5)
    with theirs.disable_adapter():
        assert (logits(theirs, tokens) - expected).abs().max() > 1e-2  # the adapter matters

    fresh = load_model(base_dir).eval()
    load_peft_adapter(fresh, out)  # and back into our model, in eval mode like the model
    assert not any(module.training for module in fresh.modules())
    torch.testing.assert_close(logits(fresh, tokens), expected, rtol=0, atol=1e-5)


def test_merged_hf_export_of_a_dora_model_loads_with_the_same_logits(tmp_path: Path) -> None:
    from tunegen.runtime import save_hf_checkpoint

    model = dora_model()
    randomize(model, seed=5)
    expected = logits(model, TOKENS)
    save_hf_checkpoint(model, tmp_path / "hf")
    keys = set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert not any("magnitude" in k or "lora" in k for k in keys)
    assert torch.allclose(logits(load_model(tmp_path / "hf"), TOKENS), expected, atol=1e-5)
