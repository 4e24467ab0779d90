"""NF4 base-weight quantization (QLoRA): error bound, memory, training, export, quiet import."""

from __future__ import annotations

import copy
import inspect
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tunegen.runtime.hf_checkpoint import load_model, save_hf_checkpoint
from tunegen.runtime.lora import (
    LoRALinear,
    apply_lora,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
)
from tunegen.runtime.losses import CrossEntropyLoss
from tunegen.runtime.models import LINEAR_LAYER_NAMES, Transformer, llama, tiny
from tunegen.runtime.quantization import (
    NF4_LEVELS,
    QuantizationReport,
    _check_block_sizes,
    _nf4,
    _quiet_torchao_import,
    dequantize_base_weights,
    is_quantized,
    quantize_base_weights,
    weight_memory_bytes,
)

TOKENS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
N_LINEARS = 4 * len(LINEAR_LAYER_NAMES)  # tiny: 4 layers, tied embeddings (no lm_head)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: on a busy shared CPU, extra intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(dtype: torch.dtype = torch.float32) -> Transformer:
    torch.manual_seed(0)
    return tiny().to(dtype)


@pytest.fixture(scope="module")
def quantized_tiny() -> tuple[dict[str, torch.Tensor], Transformer, QuantizationReport, int]:
    """(dense weights by name, the fp32 tiny model quantized, its report, bytes before)."""
    model = tiny_model()
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    before = weight_memory_bytes(model)
    report = quantize_base_weights(model)
    return dense, model, report, before


@pytest.fixture(scope="module")
def qlora_tiny() -> Transformer:
    """fp32 tiny with LoRA on every linear, then quantized. Tests take a deepcopy."""
    model = tiny_model()
    apply_lora(model, targets=LINEAR_LAYER_NAMES, rank=4, alpha=8.0)
    mark_only_lora_trainable(model)
    quantize_base_weights(model)
    return model


def nf4_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if is_quantized(p)}


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS)


# --- Import ---------------------------------------------------------------------------------------


def test_importing_torchao_prints_nothing_and_is_lazy() -> None:
    code = (
        "import sys\n"
        "import tunegen.runtime.quantization as q\n"
        "assert 'torchao' not in sys.modules\n"
        "assert not q.is_quantized(q.torch.zeros(2))\n"
        "assert 'torchao' not in sys.modules\n"
        "q._nf4()\n"
        "assert 'torchao' in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and run.stderr == ""


def test_quiet_import_drops_only_the_known_noise(caplog: pytest.LogCaptureFixture) -> None:
    torchao_log = logging.getLogger("torchao")
    pytree_log = logging.getLogger("torch.utils._pytree")
    with caplog.at_level(logging.WARNING), _quiet_torchao_import():
        torchao_log.warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library")
        pytree_log.warning(
            "%s is an Enum subclass and is now natively supported by torch.compile as an opaque"
            " value type.",
            "<enum 'KernelPreference'>",
        )
        torchao_log.warning("a real problem")
        pytree_log.warning("another real problem")
    torchao_log.warning("Failed to load /x/torchao/_C_mxfp8.so: after the import")
    assert [r.getMessage() for r in caplog.records] == [
        "a real problem",
        "another real problem",
        "Failed to load /x/torchao/_C_mxfp8.so: after the import",
    ]


# --- The error bound (the oracle the NF4 weights are checked against) --------------------------------------------------------------------------------------


def nf4_max_error(
    weight: torch.Tensor, block_size: int = 64, scaler_block_size: int = 256
) -> torch.Tensor:
    """A per-element bound on |dequantize(to_nf4(weight)) - weight|, fp32, shaped like `weight`.

    For a block with absmax `s`, element `w` is coded as the NF4 level `L` nearest to `w / s`, and
    decoded as `L * s'`, where `s'` is the double-quantized scale. So

        |L * s' - w| <= s * |L - w / s| + |L| * |s' - s|
                     <= s * (half the gap between the two levels around w / s)
                        + max(|those two levels|) * e.

    The first term is at most s * 0.1519, half the widest gap (between -1 and -0.6962). The error `e`
    comes from storing `c = s - mean(all scales)` as int8: a group of `scaler_block_size` scales
    with max |c| = a is multiplied by 128 / a and rounded, which is off by at most a / 256, except
    that the group's top value (128) is clamped to 127, which is off by at most a / 128; together,
    e = max(a / 256, c - 127 / 128 * a). A block whose absmax is 0 is decoded as L * s' with any L,
    so its bound is e. Finally `2 * eps * (s + a)` covers rounding in the weight's dtype, in which
    torchao computes (w / s, the level search, s - mean, the int8 scaling and the decoding each
    round once, adding at most about (4 s + 3 a) * eps / 2 in all: ~1e-7 of s in fp32, a few percent
    of s in bf16); the levels are taken rounded to that dtype, as torchao stores them.
    """
    _check_block_sizes(block_size, scaler_block_size)
    group = block_size * scaler_block_size
    if weight.numel() % group:
        raise ValueError(
            f"a tensor of {weight.numel()} elements does not split into NF4 blocks of {block_size}"
            f" in groups of {scaler_block_size}"
        )
    levels = torch.tensor(NF4_LEVELS, dtype=weight.dtype, device=weight.device).float()
    w = weight.detach().float().reshape(-1, block_size)  # (n_blocks, block_size)
    scale = w.abs().amax(dim=1)  # (n_blocks,)
    centered = scale - scale.mean()
    a = centered.abs().reshape(-1, scaler_block_size).amax(dim=1)  # (n_groups,)
    a = a.repeat_interleave(scaler_block_size)  # (n_blocks,)
    scale_error = torch.maximum(a / 256, centered - 127 / 128 * a)  # (n_blocks,)

    ratio = torch.where(scale[:, None] > 0, w / scale[:, None].clamp_min(1e-30), 0.0)
    upper = torch.searchsorted(levels, ratio.contiguous()).clamp(1, len(NF4_LEVELS) - 1)
    low, high = levels[upper - 1], levels[upper]  # the two levels around each w / s
    half_gap = (high - low) / 2
    level_max = torch.where(
        scale[:, None] > 0, torch.maximum(low.abs(), high.abs()), torch.ones_like(low)
    )
    eps = torch.finfo(weight.dtype).eps
    rounding = 2 * eps * (scale + a)
    bound = scale[:, None] * half_gap + level_max * scale_error[:, None] + rounding[:, None]
    return bound.reshape(weight.shape)


# --- Accuracy ---------------------------------------------------------------------------------------


def test_levels_are_torchaos() -> None:
    to_nf4 = _nf4().to_nf4
    assert torch.equal(to_nf4(torch.randn(16384)).nf4, torch.tensor(NF4_LEVELS))
    assert torch.equal(
        to_nf4(torch.randn(16384, dtype=torch.bfloat16)).nf4,
        torch.tensor(NF4_LEVELS, dtype=torch.bfloat16),
    )


def test_tiny_dequantized_weights_are_within_the_nf4_bound(quantized_tiny) -> None:
    dense, model, report, _ = quantized_tiny
    quantized = nf4_params(model)
    assert len(report.quantized) == len(quantized) == N_LINEARS and report.skipped == {}
    assert set(report.quantized) == {name.removesuffix(".weight") for name in quantized}
    for name, weight in quantized.items():
        assert not weight.requires_grad and isinstance(weight, nn.Parameter)
        original = dense[name]
        error = (weight.get_original_weight() - original).abs()
        bound = nf4_max_error(original)
        assert (error <= bound).all(), name
        # Tight: some element gets within 5% of its bound ...
        assert (error / bound).max() > 0.95, name
        # ... but on average an element sits half-way (uniform in its gap), and far below the
        # coarse bound absmax * (widest half-gap 0.1519) that ignores where the value falls.
        coarse = original.reshape(-1, 64).abs().amax(dim=1) * 0.1519
        assert error.mean() < 0.55 * bound.mean(), name
        assert error.mean() < 0.2 * coarse.mean(), name
    # Embeddings and norms stay dense, with their values.
    for name, param in model.named_parameters():
        if name not in quantized:
            assert torch.equal(param, dense[name]), name


def test_error_bound_holds_for_each_dtype_and_block_size() -> None:
    generator = torch.Generator().manual_seed(0)
    heavy_tailed = torch.randn(128, 256, generator=generator) / (
        torch.rand(128, 256, generator=generator) + 0.05
    )
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for block_size, scaler_block_size in ((64, 256), (32, 64), (128, 4)):
            weight = heavy_tailed.to(dtype)
            model = nn.Sequential(nn.Linear(256, 128, bias=False, dtype=dtype))
            model[0].weight.data.copy_(weight)
            quantize_base_weights(model, block_size=block_size, scaler_block_size=scaler_block_size)
            error = (model[0].weight.get_original_weight().float() - weight.float()).abs()
            bound = nf4_max_error(weight, block_size, scaler_block_size)
            assert (error <= bound).all(), (dtype, block_size, scaler_block_size)
            assert (error / bound).max() > 0.5


# --- Memory -----------------------------------------------------------------------------------------


def nf4_bytes(numel: int, itemsize: int) -> int:
    """4-bit codes, an int8 scale per 64, a factor per 256 scales, the mean, the 16 levels."""
    return numel // 2 + numel // 64 + itemsize * (numel // 64 // 256 + 1 + 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_memory_is_measured_and_cut(dtype: torch.dtype, quantized_tiny) -> None:
    if dtype == torch.float32:
        _, model, report, before = quantized_tiny
    else:
        model = tiny_model(dtype)
        before = weight_memory_bytes(model)
        report = quantize_base_weights(model)
        assert len(report.quantized) == N_LINEARS
    itemsize = dtype.itemsize
    rope = 2 * 512 * 32 * itemsize  # the RoPE cos/sin buffers (cast by `.to(dtype)` too)
    assert before == sum(p.numel() for p in model.parameters()) * itemsize + rope
    nf4 = nf4_params(model)
    dense = sum(p.numel() * itemsize for p in model.parameters() if not is_quantized(p))
    expected = dense + rope + sum(nf4_bytes(p.numel(), itemsize) for p in nf4.values())
    after = weight_memory_bytes(model)
    assert after == expected
    assert (report.bytes_before, report.bytes_after) == (before, after)
    print(f"\n{dtype}: {report.summary()}")
    assert report.ratio == after / before
    assert report.ratio <= (0.35 if dtype == torch.float32 else 0.5)
    assert report.summary().startswith(f"NF4: {N_LINEARS} linear weights, model weights ")


def test_weight_memory_counts_shared_storage_once() -> None:
    embed = nn.Embedding(64, 32)
    head = nn.Linear(32, 64, bias=False)
    head.weight = embed.weight
    view = nn.Module()
    view.register_buffer("first_rows", embed.weight.detach()[:32])
    assert weight_memory_bytes(nn.ModuleList([embed, head, view])) == 64 * 32 * 4
    with torch.device("meta"):
        assert weight_memory_bytes(nn.Linear(8, 8)) == 0


# --- Which layers -----------------------------------------------------------------------------------


def test_lm_head_tied_and_odd_shapes_stay_dense() -> None:
    torch.manual_seed(0)
    model = llama(
        vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=16
    )
    model.tied = nn.Linear(64, 64, bias=False)
    model.tied.weight = model.model.embed_tokens.weight
    report = quantize_base_weights(model, block_size=64, scaler_block_size=64)  # 4096 per group
    layer = "model.layers.0"
    assert report.quantized == [
        f"{layer}.self_attn.q_proj",
        f"{layer}.self_attn.o_proj",
        f"{layer}.mlp.gate_proj",
        f"{layer}.mlp.up_proj",
        f"{layer}.mlp.down_proj",
    ]
    assert report.skipped == {
        f"{layer}.self_attn.k_proj": "shape (32, 64) (2048 weights) does not split into blocks of"
        " 64 in groups of 64 (a multiple of 4096 weights)",
        f"{layer}.self_attn.v_proj": "shape (32, 64) (2048 weights) does not split into blocks of"
        " 64 in groups of 64 (a multiple of 4096 weights)",
        "lm_head": "output projection, kept dense as in QLoRA: its rounding error would reach every logit",
        "tied": "weight tied to the embedding model.embed_tokens",
    }
    summary = report.summary()
    assert summary.startswith("NF4: 5 linear weights, model weights ")
    # The log line says which layers stay dense and why.
    assert summary.endswith(
        f"; 4 left dense: {layer}.self_attn.k_proj, {layer}.self_attn.v_proj (shape (32, 64)"
        " (2048 weights) does not split into blocks of 64 in groups of 64 (a multiple of 4096"
        " weights)); lm_head (output projection, kept dense as in QLoRA: its rounding error would reach every logit); tied (weight tied to"
        " the embedding model.embed_tokens)"
    )
    assert model.tied.weight is model.model.embed_tokens.weight
    # A second call finds nothing left to do.
    again = quantize_base_weights(model, block_size=64, scaler_block_size=64)
    assert again.quantized == [] and again.skipped[f"{layer}.mlp.up_proj"] == "already NF4"


@pytest.mark.parametrize(
    "block_size, scaler_block_size, message",
    [
        (0, 256, "block_size must be a positive integer, got 0"),
        (63, 256, "block_size must be even"),
        (64, -1, "scaler_block_size must be a positive integer, got -1"),
        (64.0, 256, "block_size must be a positive integer, got 64.0"),
        (True, 256, "block_size must be a positive integer, got True"),
    ],
)
def test_bad_block_sizes_are_refused(block_size, scaler_block_size, message) -> None:
    with pytest.raises(ValueError, match=message):
        quantize_base_weights(
            nn.Linear(64, 64), block_size=block_size, scaler_block_size=scaler_block_size
        )
    with pytest.raises(ValueError, match=message):
        nf4_max_error(torch.zeros(64, 256), block_size, scaler_block_size)


def test_meta_and_merged_weights_are_refused() -> None:
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(256, 256))
    with pytest.raises(ValueError, match=r"0\.weight is on the meta device"):
        quantize_base_weights(meta)
    merged = nn.Sequential(LoRALinear.from_linear(nn.Linear(256, 256), rank=2, alpha=2.0))
    merge_lora(merged)
    with pytest.raises(ValueError, match="0 has its LoRA update merged"):
        quantize_base_weights(merged)


# --- QLoRA training -----------------------------------------------------------------------------------


def test_qlora_trains_only_the_adapters_and_matches_dequantized_weights(qlora_tiny) -> None:
    model = copy.deepcopy(qlora_tiny)
    nf4 = nf4_params(model)
    assert len(nf4) == N_LINEARS and all(".lora_" not in name for name in nf4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        name.endswith((".lora_a.weight", ".lora_b.weight")) for name in trainable
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())  # adapters full precision
    codes = {name: p.quantized_data.clone() for name, p in nf4.items()}
    reference = copy.deepcopy(model)
    dequantize_base_weights(reference)
    assert not nf4_params(reference)
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=1e-5)

    loss_fn = CrossEntropyLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(20):
        loss_sum, num_tokens = loss_fn(model(TOKENS), TOKENS)
        loss = loss_sum / num_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:  # B starts at zero, so only B gets a gradient in the first step
            grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
            assert set(grads) == trainable
            assert all(g.abs().sum() > 0 for n, g in grads.items() if ".lora_b." in n)
        optimizer.step()
        losses.append(loss.item())
    print(f"\nQLoRA loss over 20 steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 1.0
    for name, p in nf4_params(model).items():  # the base weights are untouched
        assert p is nf4[name] and torch.equal(p.quantized_data, codes[name])
    trained_reference = copy.deepcopy(model)
    dequantize_base_weights(trained_reference)
    torch.testing.assert_close(logits(model), logits(trained_reference), rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapters_applied_after_quantizing_start_at_the_quantized_model(use_dora: bool) -> None:
    if use_dora and "use_dora" not in inspect.signature(apply_lora).parameters:
        pytest.skip("this LoRALinear has no DoRA")
    model = tiny_model()
    quantize_base_weights(model)
    expected = logits(model)
    options = {"use_dora": True} if use_dora else {}
    apply_lora(model, targets=LINEAR_LAYER_NAMES, rank=4, alpha=8.0, **options)
    mark_only_lora_trainable(model)
    assert len(nf4_params(model)) == N_LINEARS
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    adapters = {n: p for n, p in model.named_parameters() if not is_quantized(p)}
    trainable = {n for n, p in adapters.items() if p.requires_grad}
    assert len(trainable) == (3 if use_dora else 2) * N_LINEARS  # lora_a, lora_b (, magnitude)
    assert all(adapters[n].dtype == torch.float32 for n in trainable)
    loss_sum, num_tokens = CrossEntropyLoss()(model.train()(TOKENS), TOKENS)
    (loss_sum / num_tokens).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def test_activation_checkpointing_backward_matches(qlora_tiny) -> None:
    model = copy.deepcopy(qlora_tiny).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.weight.normal_(std=0.1)
    grads = []
    for checkpointing in (False, True):
        model.model.activation_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        loss_sum, num_tokens = CrossEntropyLoss()(model(TOKENS), TOKENS)
        (loss_sum / num_tokens).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * N_LINEARS
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


# --- Moving, saving, exporting ------------------------------------------------------------------------


def test_state_dict_move_and_export(qlora_tiny, tmp_path: Path) -> None:
    model = copy.deepcopy(qlora_tiny)
    torch.manual_seed(1)
    with torch.no_grad():  # what training would do: make the adapters matter
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.weight.normal_(std=0.1)
    expected = logits(model)

    model.to("cpu")  # a device move keeps NF4 (a dtype change would not: see the module docs)
    assert len(nf4_params(model)) == N_LINEARS
    assert all(not p.requires_grad for p in nf4_params(model).values())
    adapter = lora_state_dict(model)
    assert len(adapter) == 2 * N_LINEARS and not any(is_quantized(t) for t in adapter.values())

    # The full state dict holds NF4 tensors; torch.save/load round-trips them (resume).
    state = model.state_dict()
    assert sum(is_quantized(t) for t in state.values()) == N_LINEARS
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = copy.deepcopy(qlora_tiny)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(logits(restored), expected, rtol=0, atol=0)

    # Export: dequantize, merge, save as an HF checkpoint, load it back.
    dequantize_base_weights(model)
    assert not nf4_params(model)
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            assert type(p) is nn.Parameter and p.dtype == torch.float32 and not p.requires_grad
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-6)
    merge_lora(model)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    out = save_hf_checkpoint(model, tmp_path / "merged")
    torch.testing.assert_close(logits(load_model(out)), expected, rtol=0, atol=1e-5)


def test_dequantize_keeps_dtype_and_shared_weights() -> None:
    shared = nn.Linear(256, 64, bias=False, dtype=torch.bfloat16)
    model = nn.ModuleDict({"a": shared, "b": nn.Linear(256, 64, bias=False)})
    model["b"].weight = shared.weight
    report = quantize_base_weights(model)
    assert report.quantized == ["a", "b"] and model["a"].weight is model["b"].weight
    dequantize_base_weights(model)
    assert model["a"].weight is model["b"].weight
    assert model["a"].weight.dtype == torch.bfloat16 and not is_quantized(model["a"].weight)
