"""Summed, shifted next-token cross-entropy and exact gradient accumulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunegen.runtime.losses import CrossEntropyLoss

V = 11


def reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hand-shifted F.cross_entropy with sum reduction."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def batch(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V, generator=generator)
    labels = torch.randint(0, V, (b, t), generator=generator)
    return logits, labels


def test_matches_shifted_cross_entropy() -> None:
    logits, labels = batch(2, 6, seed=0)
    loss_sum, num_tokens = CrossEntropyLoss()(logits, labels)
    torch.testing.assert_close(loss_sum, reference(logits, labels))
    assert num_tokens.item() == 2 * 5


def test_shift_compares_position_t_with_label_t_plus_1() -> None:
    # Logits that put all mass on token 3 at position 0 only: the loss must come from labels[:, 1].
    logits = torch.full((1, 2, V), -1e4)
    logits[0, 0, 3] = 1e4
    labels = torch.tensor([[7, 3]])
    loss_sum, num_tokens = CrossEntropyLoss()(logits, labels)
    assert loss_sum.item() == pytest.approx(0.0)
    assert num_tokens.item() == 1


def test_ignored_labels_are_excluded() -> None:
    logits, labels = batch(2, 6, seed=1)
    labels[0, :4] = -100  # a prompt: targets at positions 1..3 are ignored
    labels[1, 5] = -100  # padding at the end
    loss_sum, num_tokens = CrossEntropyLoss()(logits, labels)
    torch.testing.assert_close(loss_sum, reference(logits, labels))
    assert num_tokens.item() == 10 - 3 - 1


def test_custom_ignore_index() -> None:
    logits, labels = batch(1, 5, seed=2)
    labels[0, 2] = 0
    loss_sum, num_tokens = CrossEntropyLoss(ignore_index=0)(logits, labels)
    expected = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss_sum, expected)
    assert num_tokens.item() == int((labels[0, 1:] != 0).sum())


def test_all_ignored_gives_zero_not_nan() -> None:
    logits, labels = batch(1, 4, seed=3)
    loss_sum, num_tokens = CrossEntropyLoss()(logits, torch.full_like(labels, -100))
    assert loss_sum.item() == 0.0
    assert num_tokens.item() == 0


def test_bf16_logits_are_reduced_in_fp32() -> None:
    logits, labels = batch(2, 6, seed=4)
    loss_sum, _ = CrossEntropyLoss()(logits.bfloat16(), labels)
    assert loss_sum.dtype == torch.float32
    torch.testing.assert_close(loss_sum, reference(logits.bfloat16(), labels))


def test_accumulation_over_micro_batches_equals_one_big_batch() -> None:
    # Two micro-batches with different numbers of targets: averaging their means would be wrong.
    logits_a, labels_a = batch(2, 6, seed=5)
    logits_b, labels_b = batch(2, 6, seed=6)
    labels_a[:, :4] = -100
    loss_fn = CrossEntropyLoss()

    sum_a, tokens_a = loss_fn(logits_a, labels_a)
    sum_b, tokens_b = loss_fn(logits_b, labels_b)
    accumulated = (sum_a + sum_b) / (tokens_a + tokens_b)

    big_mean = F.cross_entropy(
        torch.cat([logits_a, logits_b])[:, :-1].reshape(-1, V),
        torch.cat([labels_a, labels_b])[:, 1:].reshape(-1),
        ignore_index=-100,
    )
    torch.testing.assert_close(accumulated, big_mean)
    assert accumulated != pytest.approx(((sum_a / tokens_a + sum_b / tokens_b) / 2).item())


def test_gradients_accumulate_exactly() -> None:
    logits_a, labels_a = batch(1, 5, seed=7)
    logits_b, labels_b = batch(1, 5, seed=8)
    labels_b[0, :3] = -100
    loss_fn = CrossEntropyLoss()
    total_tokens = sum(loss_fn(x, y)[1] for x, y in [(logits_a, labels_a), (logits_b, labels_b)])

    micro = [logits_a.clone().requires_grad_(), logits_b.clone().requires_grad_()]
    for x, y in zip(micro, [labels_a, labels_b], strict=True):
        (loss_fn(x, y)[0] / total_tokens).backward()

    joint = torch.cat([logits_a, logits_b]).requires_grad_()
    loss_sum, num_tokens = loss_fn(joint, torch.cat([labels_a, labels_b]))
    (loss_sum / num_tokens).backward()
    torch.testing.assert_close(torch.cat([m.grad for m in micro]), joint.grad)


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match=r"expected logits \(B, T, V\) and labels \(B, T\)"):
        CrossEntropyLoss()(torch.zeros(2, 5, V), torch.zeros(2, 4, dtype=torch.long))
