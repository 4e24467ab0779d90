"""LoRA out to PEFT and to merged HF checkpoints: logits equal transformers + peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import save_random_hf_model
from safetensors.torch import load_file

from tunegen.runtime import (
    load_model,
    load_peft_adapter,
    merge_lora,
    save_hf_checkpoint,
    save_peft_adapter,
)
from tunegen.runtime.errors import CheckpointError
from tunegen.runtime.lora import LoRALinear, apply_lora, unmerge_lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# transformers 5.24 warns about its own deprecated name when peft calls it.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

# Phi-3 has fused qkv_proj / gate_up_proj: LoRA on q and v (not k) and on gate (not up).
ARCHITECTURES = ["llama", "phi3"]
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def base_dir(request, tmp_path_factory) -> Path:
    return save_random_hf_model(tmp_path_factory.mktemp(request.param), request.param)


def trained_lora_model(base_dir: Path, *, seed: int = 1):
    """Our model with LoRA applied and random B matrices, as after some training."""
    model = load_model(base_dir)
    apply_lora(model, targets=TARGETS, rank=4, alpha=8.0, dropout=0.1)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.weight.normal_(std=0.05)
    return model.eval()


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_peft_loads_our_adapter_with_equal_logits(base_dir: Path, tmp_path: Path) -> None:
    ours = trained_lora_model(base_dir)
    out = save_peft_adapter(ours, tmp_path / "adapter", base_model=str(base_dir))

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(base_dir)
    assert config["lora_dropout"] == 0.1 and config["bias"] == "none"
    assert config["fan_in_fan_out"] is False
    keys = set(load_file(out / "adapter_model.safetensors"))
    fused = ours.hf_config["model_type"] == "phi3"
    qkv = "qkv_proj" if fused else "q_proj"
    assert f"base_model.model.model.layers.0.self_attn.{qkv}.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert all(not k.startswith("base_model.model.model.layers.0.self_attn.k_") for k in keys)

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    with_adapter = peft.PeftModel.from_pretrained(base, out).eval()
    tokens = torch.randint(0, 128, (2, 24))
    expected = logits(ours, tokens)
    torch.testing.assert_close(logits(with_adapter, tokens), expected, rtol=0, atol=1e-4)
    with with_adapter.disable_adapter():  # PEFT injects into `base` in place
        assert (logits(with_adapter, tokens) - expected).abs().max() > 1e-3  # the adapter matters

    # And back: a fresh model with the PEFT adapter loaded computes the same.
    fresh = load_model(base_dir)
    wrapped = load_peft_adapter(fresh, out)
    # Phi-3's fused adapters land on every part: q/k/v and gate/up.
    per_layer = 7 if fused else len(TARGETS)
    assert len(wrapped) == 2 * per_layer
    assert wrapped[0] == "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(logits(fresh.eval(), tokens), expected, rtol=0, atol=1e-5)


def test_merged_export_equals_the_lora_model(base_dir: Path, tmp_path: Path) -> None:
    ours = trained_lora_model(base_dir)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    out = save_hf_checkpoint(ours, tmp_path / "merged", base_dir)

    # The model in memory is untouched: still unmerged, same tensors.
    assert not any(m.merged for m in ours.modules() if isinstance(m, LoRALinear))
    for key, value in ours.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any("lora" in key for key in load_file(out / "model.safetensors"))

    tokens = torch.randint(0, 128, (2, 24))
    expected = logits(ours, tokens)
    merged_hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(merged_hf, tokens), expected, rtol=0, atol=1e-4)

    # merge_lora in place, then saving, gives the same checkpoint.
    merge_lora(ours)
    again = save_hf_checkpoint(ours, tmp_path / "merged2", base_dir)
    torch.testing.assert_close(
        load_file(again / "model.safetensors"), load_file(out / "model.safetensors"), rtol=0,
        atol=1e-6,
    )  # fmt: skip
    unmerge_lora(ours)


def test_adapter_settings_we_do_not_implement_are_refused(tmp_path: Path) -> None:
    base_dir = save_random_hf_model(tmp_path / "base", "llama")
    out = save_peft_adapter(
        trained_lora_model(base_dir), tmp_path / "adapter", base_model="some/base"
    )
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(CheckpointError, match="use_rslora=True is not supported"):
        load_peft_adapter(load_model(base_dir), out)
    # A DoRA config needs a magnitude for every module.
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="lacks a DoRA magnitude"):
        load_peft_adapter(load_model(base_dir), out)
    mixed = load_model(base_dir)
    apply_lora(mixed, targets=["q_proj"], rank=4, alpha=8.0)
    apply_lora(mixed, targets=["v_proj"], rank=4, alpha=8.0, use_dora=True)
    with pytest.raises(ValueError, match="DoRA layers or none"):
        save_peft_adapter(mixed, tmp_path / "mixed", base_model="x")
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_peft_adapter(load_model(base_dir), tmp_path / "empty", base_model="x")
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        save_peft_adapter(trained_lora_model(base_dir), out, base_model="x")


def test_an_adapter_of_the_builtin_model_carries_its_base_even_when_quantized(
    tmp_path: Path,
) -> None:
    """A built-in base is written into the adapter dir (NF4 weights dequantized) and recorded by
    its absolute path, so peft finds it from any directory."""
    from tunegen.runtime.lora import dense_weight
    from tunegen.runtime.quantization import quantize_base_weights

    torch.manual_seed(0)
    model = load_model("tiny")
    quantize_base_weights(model)
    apply_lora(model, targets=["q_proj"], rank=2, alpha=4)
    out = save_peft_adapter(model, tmp_path / "adapter", base_model="tiny")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base_model").resolve())
    base = load_model(out / "base_model")
    expected = dense_weight(model.model.layers[0].mlp.down_proj.weight.detach())
    assert torch.equal(base.model.layers[0].mlp.down_proj.weight, expected)
