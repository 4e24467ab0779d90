"""GRPO's advantages and loss types against hand computations on a fixed batch.

The formulas are TRL's `GRPOTrainer` (trl/trainer/grpo_trainer.py, `_compute_loss` and the
advantage computation in `_generate_and_score_completions`):

    advantages = (r - mean_group(r)) / (std_group(r) + 1e-4)          (dr_grpo: no division)
    ratio      = exp(logp - old_logp)
    loss[i,t]  = -min(ratio * A_i, clamp(ratio, 1 - eps, 1 + eps) * A_i) + beta * kl[i,t]
    kl[i,t]    = exp(ref - logp) - (ref - logp) - 1
    grpo:      ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    dapo:      (loss * mask).sum() / mask.sum()
    dr_grpo:   (loss * mask).sum() / (num_rows * max_completion_length)

Here the same numbers are written out by hand (plain Python floats), not with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunegen.runtime.grpo import (
    GRPOLoss,
    Rollout,
    group_advantages,
    make_rollout,
    mean_metrics,
    rollout_metrics,
    token_logps,
)

IGNORE = -100


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, 1.0])
    got = group_advantages(rewards, 4)
    # group 1: mean 0.5, sample std sqrt(((.5)^2 * 4) / 3) = sqrt(1/3)
    std1 = math.sqrt(1 / 3)
    # group 3: mean 1.0, deviations 1, -1, 0, 0: std sqrt(2 / 3)
    std3 = math.sqrt(2 / 3)
    expected = [
        0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 0.5 / (std1 + 1e-4),
        0.0, 0.0, 0.0, 0.0,  # a group that all scored the same teaches nothing
        1.0 / (std3 + 1e-4), -1.0 / (std3 + 1e-4), 0.0, 0.0,
    ]  # fmt: skip
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    unscaled = group_advantages(rewards, 4, scale=False)  # Dr. GRPO
    assert unscaled.tolist() == pytest.approx(
        [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1.0, -1.0, 0, 0], abs=1e-6
    )
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(rewards[:5], 4)


# A fixed batch: 2 completions, 3 loss positions each; row 2 has only 2 completion tokens.
LOGPS = [[-1.0, -0.5, -2.0], [-0.2, -1.5, 0.0]]
OLD = [[-1.3, -0.5, -1.0], [-0.2, -1.0, 0.0]]  # ratios e^.3, 1, e^-1 | 1, e^-.5, (masked)
REF = [[-1.1, -0.4, -2.5], [-0.3, -1.5, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]
EPS, BETA, MAX_NEW = 0.2, 0.1, 4


def _rollout(old: bool = True) -> Rollout:
    # tokens/labels: position 0 is the prompt; labels[:, 1:] holds the 3 scored positions.
    labels = torch.tensor([[IGNORE, 5, 6, 7], [IGNORE, 5, 6, IGNORE]])
    return Rollout(
        tokens=torch.tensor([[1, 5, 6, 7], [1, 5, 6, 0]]),
        labels=labels,
        truncated=torch.tensor([False, False]),
        lengths=torch.tensor([3, 2]),
        advantages=torch.tensor(ADV),
        old_logps=torch.tensor(OLD) if old else None,
        reference_logps=torch.tensor(REF),
    )


def _token_losses() -> list[list[float]]:
    """Per-token loss of the fixed batch, written out in plain Python."""
    losses = []
    for logp_row, old_row, ref_row, adv in zip(LOGPS, OLD, REF, ADV, strict=True):
        row = []
        for logp, old, ref in zip(logp_row, old_row, ref_row, strict=True):
            ratio = math.exp(logp - old)
            clipped = min(max(ratio, 1 - EPS), 1 + EPS)
            kl = math.exp(ref - logp) - (ref - logp) - 1
            row.append(-min(ratio * adv, clipped * adv) + BETA * kl)
        losses.append(row)
    return losses


def _hand_loss(variant: str) -> float:
    losses = _token_losses()
    masked = [
        [loss * m for loss, m in zip(row, mask, strict=True)]
        for row, mask in zip(losses, MASK, strict=True)
    ]
    if variant == "grpo":
        return sum(sum(row) / sum(mask) for row, mask in zip(masked, MASK, strict=True)) / 2
    if variant == "dapo":
        return sum(map(sum, masked)) / sum(map(sum, MASK))
    return sum(map(sum, masked)) / (2 * MAX_NEW)


@pytest.mark.parametrize("variant", ["grpo", "dapo", "dr_grpo"])
def test_each_loss_type_equals_the_hand_computation(variant: str) -> None:
    loss_fn = GRPOLoss(variant=variant, epsilon=EPS, kl_beta=BETA, max_new_tokens=MAX_NEW)
    rollout = _rollout()
    output = loss_fn(torch.tensor(LOGPS), rollout)
    got = output.loss_sum.item() / loss_fn.normalizer([rollout])
    assert got == pytest.approx(_hand_loss(variant), rel=1e-6)
    assert output.num_tokens == 5
    # Clipped: row 1 token 1 (ratio e^.3 > 1.2, A > 0); row 1 token 3 has ratio e^-1 < 0.8 but
    # A > 0, so the clip does not bind; row 2 token 2 (ratio e^-.5 < 0.8, A < 0).
    assert output.clipped == 2
    kl = [
        math.exp(r - lp) - (r - lp) - 1
        for lr, rr, mr in zip(LOGPS, REF, MASK, strict=True)
        for lp, r, m in zip(lr, rr, mr, strict=True)
        if m
    ]
    assert output.kl_sum == pytest.approx(sum(kl), rel=1e-6)


def test_gradient_of_the_unclipped_objective_is_the_advantage() -> None:
    """With old_logps None (one update per rollout) the ratio is 1 and d loss / d logp = -A per
    token, scaled by the loss type's normalisation (grpo: 1 / (|o_i| * rows))."""
    logps = torch.tensor(LOGPS, requires_grad=True)
    loss_fn = GRPOLoss(variant="grpo", epsilon=EPS, kl_beta=0.0, max_new_tokens=MAX_NEW)
    rollout = _rollout(old=False)
    (loss_fn(logps, rollout).loss_sum / loss_fn.normalizer([rollout])).backward()
    expected = [-1.0 / 3 / 2] * 3 + [2.0 / 2 / 2, 2.0 / 2 / 2, 0.0]
    assert logps.grad.flatten().tolist() == pytest.approx(expected)


@pytest.mark.parametrize("variant", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_sum_to_the_whole_batch(variant: str) -> None:
    """Split into micro-batches, the step's loss (each sum over the step's normalizer) is the
    loss of the whole batch: gradient accumulation does not change the objective."""
    loss_fn = GRPOLoss(variant=variant, epsilon=EPS, kl_beta=BETA, max_new_tokens=MAX_NEW)
    whole = _rollout()
    halves = [Rollout(*(f[i : i + 1] if f is not None else None for f in whole)) for i in (0, 1)]
    logps = torch.tensor(LOGPS)
    one = loss_fn(logps, whole).loss_sum.item() / loss_fn.normalizer([whole])
    parts = sum(
        loss_fn(logps[i : i + 1], half).loss_sum.item() for i, half in enumerate(halves)
    ) / loss_fn.normalizer(halves)
    assert parts == pytest.approx(one, rel=1e-6)


def test_mask_truncated_drops_cut_off_completions() -> None:
    rollout = _rollout()._replace(truncated=torch.tensor([True, False]))
    loss_fn = GRPOLoss(variant="dapo", epsilon=EPS, kl_beta=BETA, max_new_tokens=3)
    masked = GRPOLoss(
        variant="dapo", epsilon=EPS, kl_beta=BETA, max_new_tokens=3, mask_truncated=True
    )
    assert loss_fn(torch.tensor(LOGPS), rollout).num_tokens == 5
    output = masked(torch.tensor(LOGPS), rollout)
    assert output.num_tokens == 2
    row2 = sum(_token_losses()[1][:2]) / 2
    assert output.loss_sum.item() / masked.normalizer([rollout]) == pytest.approx(row2, rel=1e-6)


def test_kl_is_zero_when_policy_is_the_reference() -> None:
    rollout = _rollout(old=False)._replace(reference_logps=torch.tensor(LOGPS))
    output = GRPOLoss(kl_beta=0.5, max_new_tokens=MAX_NEW)(torch.tensor(LOGPS), rollout)
    assert output.kl_sum == 0.0


def test_no_reference_with_beta_is_a_config_error() -> None:
    from tunegen.runtime.errors import ConfigError

    rollout = _rollout()._replace(reference_logps=None)
    with pytest.raises(ConfigError, match=r"grpo\.beta"):
        GRPOLoss(kl_beta=0.1, max_new_tokens=MAX_NEW)(torch.tensor(LOGPS), rollout)


def test_make_rollout_layout() -> None:
    rollout = make_rollout(
        [[1, 10], [1, 11, 12]], [[20, 21], [22, 23, 24]], max_new_tokens=3, stop_id=2, pad_id=0
    )
    # The first completion stopped (2 < 3 tokens): its stop token is appended and trained.
    assert rollout.tokens.tolist() == [[1, 10, 20, 21, 2, 0], [1, 11, 12, 22, 23, 24]]
    assert rollout.labels.tolist() == [
        [IGNORE, IGNORE, 20, 21, 2, IGNORE],
        [IGNORE, IGNORE, IGNORE, 22, 23, 24],
    ]
    assert rollout.truncated.tolist() == [False, True]
    assert rollout.lengths.tolist() == [2, 3]


def test_token_logps_are_the_tempered_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[IGNORE, 3, 4, 5], [IGNORE, IGNORE, 6, IGNORE]])
    got = token_logps(logits, labels, temperature=0.5)
    log_probs = torch.log_softmax(logits / 0.5, dim=-1)
    assert got[0, 0].item() == pytest.approx(log_probs[0, 0, 3].item(), rel=1e-5)
    assert got[0, 2].item() == pytest.approx(log_probs[0, 2, 5].item(), rel=1e-5)
    assert got[1, 1].item() == pytest.approx(log_probs[1, 1, 6].item(), rel=1e-5)
    assert got[1, 0].item() == 0.0 and got[1, 2].item() == 0.0


def test_step_metrics() -> None:
    rollout = _rollout()._replace(truncated=torch.tensor([True, False]))
    output = GRPOLoss(kl_beta=BETA, max_new_tokens=MAX_NEW)(torch.tensor(LOGPS), rollout)
    metrics = rollout_metrics([rollout], [output], torch.tensor([1.0, 0.0]))
    assert metrics["reward"] == 0.5 and metrics["reward_std"] == 0.5
    assert metrics["completion_length"] == 2.5 and metrics["truncated_fraction"] == 0.5
    assert metrics["clip_fraction"] == pytest.approx(2 / 5)
    assert mean_metrics([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0}
