"""Speed features compute what the plain code computes (issue 18).

Fused LoRA update, chunked cross-entropy, fused AdamW, optimizer in backward, token-budget
batches and bf16: each against the straightforward computation, in values and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tunegen.runtime.data import (
    PackedDataset,
    TokenBudgetSampler,
    grouped_padded_collate,
    padded_collate,
)
from tunegen.runtime.data.sampler import token_budget_batches
from tunegen.runtime.environment import has_native_bf16, resolve_dtype
from tunegen.runtime.lora import LoRALinear, apply_lora, mark_only_lora_trainable
from tunegen.runtime.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss
from tunegen.runtime.models import Transformer, llama
from tunegen.runtime.optim import step_in_backward


def small(tied: bool = False, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return llama(
        vocab_size=96,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=48,
        max_seq_len=32,
        tie_embeddings=tied,
    )


def batch(seed: int = 0, shape: tuple[int, int] = (3, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and labels with a masked prompt (first 4 positions) and right padding on row 0."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 96, shape, generator=generator)
    labels = tokens.clone()
    labels[:, :4] = -100
    labels[0, -3:] = -100
    return tokens, labels


# -- LoRA: one addmm ----------------------------------------------------------------------------


def test_lora_update_in_one_addmm_equals_the_textbook_formula_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(16, 24, rank=4, alpha=8.0, bias=True)
    with torch.no_grad():
        layer.lora_b.weight.normal_()
    A, B = layer.lora_a.weight, layer.lora_b.weight
    x = torch.randn(2, 5, 16, requires_grad=True)
    upstream = torch.randn(2, 5, 24)
    results = []
    for compute in (layer, lambda x: F.linear(x, layer.weight, layer.bias) + (x @ A.T @ B.T) * 2.0):
        y = compute(x)
        (y * upstream).sum().backward()
        results.append((y.detach(), x.grad, A.grad, B.grad))
        x.grad = A.grad = B.grad = None
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_lora_without_dropout_runs_no_dropout_op() -> None:
    layer = LoRALinear(8, 8, rank=2, alpha=2.0, dropout=0.0).train()
    assert isinstance(layer.dropout, torch.nn.Identity)


# -- chunked cross-entropy ----------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 4096, None])
def test_chunked_cross_entropy_equals_plain_in_value_and_gradient(
    tied: bool, chunk_size: int | None
) -> None:
    tokens, labels = batch()
    plain_model, chunked_model = small(tied), small(tied)
    loss, count = CrossEntropyLoss()(plain_model(tokens), labels)
    loss.backward()
    hidden = chunked_model.hidden_states(tokens)
    chunked, chunked_count = ChunkedCrossEntropyLoss(chunk_size=chunk_size)(
        hidden, chunked_model.output_weight, labels
    )
    chunked.backward()
    assert chunked.dtype == torch.float32 and int(chunked_count) == int(count) == 8 + 8 + 5
    torch.testing.assert_close(chunked, loss, rtol=1e-6, atol=1e-5)
    for (name, a), b in zip(
        plain_model.named_parameters(), chunked_model.parameters(), strict=True
    ):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_cross_entropy_with_a_frozen_head_and_no_targets() -> None:
    model = small()
    model.lm_head.weight.requires_grad_(False)
    tokens, labels = batch()
    loss, count = ChunkedCrossEntropyLoss()(
        model.hidden_states(tokens), model.output_weight, torch.full_like(labels, -100)
    )
    assert loss.item() == 0.0 and int(count) == 0
    loss.backward()
    assert model.lm_head.weight.grad is None
    with torch.no_grad():  # evaluation: no gradient work at all
        value, _ = ChunkedCrossEntropyLoss()(
            model.hidden_states(tokens), model.output_weight, labels
        )
    expected, _ = CrossEntropyLoss()(model(tokens), labels)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-6, atol=1e-5)


# -- fused AdamW and optimizer in backward ------------------------------------------------------


def train_steps(
    model: Transformer, optimizer: torch.optim.Optimizer, steps: int, *, in_bwd: bool = False
) -> list[float]:
    """`steps` steps; `in_bwd`: the loss is averaged before backward() (as the recipe does
    with training.optimizer_in_bwd), else the gradients after it."""
    losses = []
    for step in range(steps):
        tokens, labels = batch(seed=step)
        loss, count = CrossEntropyLoss()(model(tokens), labels)
        if in_bwd:
            (loss / count.clamp(min=1)).backward()
        else:
            loss.backward()
            for param in model.parameters():
                param.grad.div_(int(count))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item() / int(count))
    return losses


def test_fused_adamw_equals_the_reference_implementation() -> None:
    reference, fused = small(), small()
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    expected = train_steps(reference, torch.optim.AdamW(reference.parameters(), **kwargs), 4)
    got = train_steps(fused, torch.optim.AdamW(fused.parameters(), fused=True, **kwargs), 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_optimizer_in_backward_equals_the_normal_step_and_frees_gradients() -> None:
    reference, stepped = small(tied=True), small(tied=True)
    kwargs = dict(lr=1e-2, weight_decay=0.1, fused=True)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), **kwargs)
    expected = train_steps(reference, reference_optimizer, 3, in_bwd=True)
    optimizer = torch.optim.AdamW(stepped.parameters(), **kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    remove = step_in_backward(optimizer)
    got = train_steps(stepped, optimizer, 3, in_bwd=True)
    assert got == expected
    for a, b in zip(reference.parameters(), stepped.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert b.grad is None
    # The state dict is an ordinary AdamW one (checkpoints and resume are unchanged).
    assert optimizer.state_dict()["state"][0]["step"].item() == 3
    scheduler.step()
    remove()


# -- token-budget batches -----------------------------------------------------------------------


def test_token_budget_batches_fit_the_budget_and_keep_their_count_every_epoch() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (101,), generator=generator).tolist()
    sampler = TokenBudgetSampler(lengths, 64, seed=3)
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sampler.num_batches
        assert sorted(i for b in batches for i in b) == list(range(101))  # each sample once
        assert all(max(lengths[i] for i in b) * len(b) <= 64 for b in batches)
        seen.append(batches)
    assert seen[0] != seen[1]  # the order (and membership among equal lengths) changes
    sampler.set_epoch(1, skip=5)
    assert list(sampler) == seen[1][5:]  # resuming skips exactly the batches done
    assert token_budget_batches([50, 10], [0, 1], 40) == [[0], [1]]  # too long: alone


def test_token_budget_batches_give_the_same_per_sample_losses_as_padded_batches() -> None:
    model = small().eval()
    generator = torch.Generator().manual_seed(1)
    samples = []
    for length in torch.randint(2, 30, (12,), generator=generator).tolist():
        tokens = torch.randint(0, 96, (length,), generator=generator).tolist()
        samples.append({"tokens": tokens, "labels": [-100] * (length // 3) + tokens[length // 3 :]})

    def per_sample_losses(batch: dict[str, torch.Tensor]) -> list[float]:
        logits = model(batch["tokens"])
        losses = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none"
        )
        counts = (batch["labels"][:, 1:] != -100).sum(1).clamp(min=1)
        return (losses.sum(1) / counts).tolist()

    with torch.no_grad():
        padded = per_sample_losses(padded_collate(samples, pad_id=0))  # all 12 in one batch
        sampler = TokenBudgetSampler([len(s["tokens"]) for s in samples], 64, seed=0)
        dataset = PackedDataset(samples)
        budget = {}
        for group in sampler:
            collated = grouped_padded_collate([dataset[group]], pad_id=0)
            assert collated["tokens"].numel() <= 64
            budget.update(zip(group, per_sample_losses(collated), strict=True))
    assert sorted(budget) == list(range(12))
    torch.testing.assert_close([budget[i] for i in range(12)], padded, rtol=1e-5, atol=1e-5)


# -- bf16 ---------------------------------------------------------------------------------------


def test_bf16_loss_is_within_tolerance_of_fp32_on_the_tiny_model() -> None:
    from tunegen.runtime.models import tiny

    torch.manual_seed(0)
    model = tiny()
    tokens = torch.randint(0, model.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32, count = CrossEntropyLoss()(model(tokens), tokens)
        bf16, _ = CrossEntropyLoss()(copy.deepcopy(model).to(torch.bfloat16)(tokens), tokens)
    fp32, bf16 = fp32.item() / int(count), bf16.item() / int(count)
    assert abs(bf16 - fp32) / fp32 < 0.01, (fp32, bf16)


def test_dtype_auto_is_bf16_only_where_the_hardware_has_it() -> None:
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if has_native_bf16(cpu) else torch.float32
    assert resolve_dtype("auto", cpu) is expected
    assert resolve_dtype("fp32", cpu) is torch.float32


def test_lora_model_trains_only_adapters_with_fused_update() -> None:
    model = small()
    apply_lora(model, targets=["q_proj", "v_proj"], rank=2, alpha=4.0)
    mark_only_lora_trainable(model)
    tokens, labels = batch()
    loss, _ = CrossEntropyLoss()(model(tokens), labels)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable and all(".lora_" in n for n in trainable)
