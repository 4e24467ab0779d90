"""DPO: sequence log-probabilities, the sigmoid and IPO losses against TRL's formulas, metrics."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tunegen.runtime.data import PreferenceDataset, preference_collate
from tunegen.runtime.dpo import DPOLoss, DPOOutput, preference_metrics, sequence_logps
from tunegen.runtime.tokenizers import SentencePieceTokenizer, builtin_tokenizer_path

REPO = Path(__file__).resolve().parents[2]

# Two pairs, rows in preference_collate's order: chosen 0, chosen 1, rejected 0, rejected 1.
POLICY = [-4.0, -7.5, -6.0, -5.0]
REFERENCE = [-5.0, -7.0, -5.5, -6.0]
NUM_TOKENS = [2, 5, 4, 1]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def margins(policy: list[float], reference: list[float]) -> list[float]:
    """TRL's `logits`: (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected), per pair."""
    b = len(policy) // 2
    return [(policy[i] - policy[b + i]) - (reference[i] - reference[b + i]) for i in range(b)]


def dpo(loss_fn: DPOLoss, policy: list[float], reference: list[float], num_tokens: list[int]):
    return loss_fn(torch.tensor(policy), torch.tensor(reference), torch.tensor(num_tokens))


def random_batch(rows: int = 4, length: int = 7, vocab: int = 11) -> tuple[torch.Tensor, ...]:
    """Logits and labels with a masked prompt and right padding of different lengths."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, length, vocab, generator=generator)
    labels = torch.randint(0, vocab, (rows, length), generator=generator)
    for row in range(rows):
        labels[row, : 1 + row % 3] = -100  # prompt
        labels[row, length - row :] = -100  # padding
    return logits, labels


# -- sequence_logps ------------------------------------------------------------------------------


def test_sequence_logps_sums_the_label_tokens_log_probabilities() -> None:
    logits, labels = random_batch()
    logps, num_tokens = sequence_logps(logits, labels)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    for row in range(labels.shape[0]):
        targets = [t for t in range(1, labels.shape[1]) if labels[row, t] != -100]
        expected = sum(log_probs[row, t - 1, labels[row, t]].item() for t in targets)
        assert logps[row].item() == pytest.approx(expected, abs=1e-5)
        assert num_tokens[row].item() == len(targets)
    assert logps.shape == num_tokens.shape == (4,)
    assert (logps.dtype, num_tokens.dtype) == (torch.float32, torch.int64)


def test_sequence_logps_ignores_padding_and_prompt_logits() -> None:
    logits, labels = random_batch()
    before = sequence_logps(logits, labels)
    noisy = logits.clone()
    unscored = torch.ones(labels.shape, dtype=torch.bool)  # the last position scores nothing
    unscored[:, :-1] = labels[:, 1:] == -100
    noisy[unscored] = 1e4
    padded_logits = torch.cat([noisy, torch.randn(4, 3, 11)], dim=1)
    padded_labels = torch.cat([labels, torch.full((4, 3), -100)], dim=1)
    after = sequence_logps(padded_logits, padded_labels)
    torch.testing.assert_close(after, before)


def test_sequence_logps_is_fp32_for_bf16_logits() -> None:
    logits, labels = random_batch()
    half = logits.bfloat16()
    logps, _ = sequence_logps(half, labels)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, sequence_logps(half.float(), labels)[0])


def test_sequence_logps_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected logits \(N, T, V\) and labels \(N, T\)"):
        sequence_logps(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# -- the losses ----------------------------------------------------------------------------------


def test_sigmoid_loss_is_trls_formula() -> None:
    beta = 0.1
    out = dpo(DPOLoss(beta=beta), POLICY, REFERENCE, NUM_TOKENS)
    h = margins(POLICY, REFERENCE)
    assert h == [1.5, -1.5]
    expected = sum(-log_sigmoid(beta * x) for x in h)
    assert out.loss_sum.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_pairs == 2
    # rewards: beta * (policy - reference), chosen then rejected
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1, -0.05]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.05, 0.1]))


def test_label_smoothing_is_trls_conservative_dpo() -> None:
    beta, eps = 0.5, 0.2
    out = dpo(DPOLoss(beta=beta, label_smoothing=eps), POLICY, REFERENCE, NUM_TOKENS)
    expected = sum(
        -log_sigmoid(beta * x) * (1 - eps) - log_sigmoid(-beta * x) * eps
        for x in margins(POLICY, REFERENCE)
    )
    assert out.loss_sum.item() == pytest.approx(expected, rel=1e-6)


def test_ipo_loss_averages_per_token_first() -> None:
    beta = 0.5
    out = dpo(DPOLoss(beta=beta, loss_type="ipo"), POLICY, REFERENCE, NUM_TOKENS)
    policy = [lp / n for lp, n in zip(POLICY, NUM_TOKENS, strict=True)]
    reference = [lp / n for lp, n in zip(REFERENCE, NUM_TOKENS, strict=True)]
    expected = sum((x - 1 / (2 * beta)) ** 2 for x in margins(policy, reference))
    assert out.loss_sum.item() == pytest.approx(expected, rel=1e-6)
    # As in TRL, IPO's rewards come from the same per-token means.
    expected_chosen = [beta * (policy[i] - reference[i]) for i in range(2)]
    assert out.chosen_rewards.tolist() == pytest.approx(expected_chosen, rel=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_policy_equal_to_reference_costs_log_2_per_pair(label_smoothing: float) -> None:
    out = dpo(DPOLoss(label_smoothing=label_smoothing), POLICY, POLICY, NUM_TOKENS)
    assert out.loss_sum.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert out.chosen_rewards.tolist() == out.rejected_rewards.tolist() == [0.0, 0.0]
    metrics = preference_metrics([out])
    assert metrics["rewards/accuracy"] == 0.0  # a tie is not a win
    assert metrics["rewards/margin"] == 0.0


def test_gradients_reach_the_policy_only() -> None:
    logits, labels = random_batch()
    policy_logits = logits.clone().requires_grad_()
    reference_logits = (logits + 0.1).requires_grad_()
    policy_logps, num_tokens = sequence_logps(policy_logits, labels)
    reference_logps, _ = sequence_logps(reference_logits, labels)
    out = DPOLoss()(policy_logps, reference_logps, num_tokens)
    out.loss_sum.backward()
    assert reference_logits.grad is None
    assert policy_logits.grad is not None and torch.isfinite(policy_logits.grad).all()
    scored = torch.zeros(labels.shape, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != -100
    assert policy_logits.grad[scored].abs().sum() > 0
    assert policy_logits.grad[~scored].abs().sum() == 0  # prompt and padding get none
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_micro_batch_sums_add_up_to_the_whole_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    policy, reference = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    num_tokens = torch.randint(1, 9, (8,), generator=generator)
    for loss_type in ("sigmoid", "ipo"):
        loss_fn = DPOLoss(loss_type=loss_type)
        whole = loss_fn(policy, reference, num_tokens)
        # pairs 0-1 and 2-3 as two micro-batches, each in chosen-then-rejected order
        halves = [
            loss_fn(policy[rows], reference[rows], num_tokens[rows])
            for rows in ([0, 1, 4, 5], [2, 3, 6, 7])
        ]
        assert sum(h.num_pairs for h in halves) == whole.num_pairs == 4
        torch.testing.assert_close(sum(h.loss_sum for h in halves), whole.loss_sum)
        assert preference_metrics(halves) == pytest.approx(preference_metrics([whole]))


def test_preference_metrics_over_a_window() -> None:
    outputs = [
        DPOOutput(torch.tensor(0.0), 2, torch.tensor([0.3, -0.1]), torch.tensor([0.1, 0.2])),
        DPOOutput(torch.tensor(0.0), 1, torch.tensor([0.5]), torch.tensor([-0.1])),
    ]
    assert preference_metrics(outputs) == pytest.approx(
        {
            "rewards/chosen": (0.3 - 0.1 + 0.5) / 3,
            "rewards/rejected": (0.1 + 0.2 - 0.1) / 3,
            "rewards/accuracy": 2 / 3,
            "rewards/margin": (0.2 - 0.3 + 0.6) / 3,
        }
    )
    with pytest.raises(ValueError, match="at least one"):
        preference_metrics([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"loss_type": "hinge"},
            "loss_type: 'hinge' is not one of sigmoid, ipo",
        ),
        ({"beta": 0.0}, "beta: must be greater than 0, got 0.0"),
        ({"label_smoothing": 0.6}, "label_smoothing: must be at most 0.5, got 0.6"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing applies to loss_type"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DPOLoss(**kwargs)


@pytest.mark.parametrize(
    ("policy", "reference", "num_tokens"),
    [
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1, 1, 1]),  # odd: not pairs
        ([0.0, 1.0], [0.0, 1.0, 2.0, 3.0], [1, 1]),
        ([[0.0, 1.0]], [[0.0, 1.0]], [[1, 1]]),
        ([], [], []),
    ],
)
def test_rows_must_be_pairs_of_one_shape(policy: list, reference: list, num_tokens: list) -> None:
    with pytest.raises(ValueError, match=r"of one shape \(2B,\): chosen rows then rejected rows"):
        dpo(DPOLoss(), policy, reference, num_tokens)


def test_repr() -> None:
    assert repr(DPOLoss(beta=0.2)) == "DPOLoss(beta=0.2, loss_type='sigmoid', label_smoothing=0.0)"


# -- a few steps on the demo pairs ---------------------------------------------------------------


def test_dpo_steps_on_the_demo_pairs_raise_margin_and_accuracy() -> None:
    """The pieces as a recipe wires them: data, collate, log-probs, loss, accumulation, metrics."""
    torch.manual_seed(0)
    tok = SentencePieceTokenizer(builtin_tokenizer_path())
    data = PreferenceDataset(
        tok, source=REPO / "specs/data/demo_preference.jsonl", template="plain", max_seq_len=64
    )
    pairs = [data[i] for i in range(16)]
    batches = [preference_collate(pairs[i : i + 4], pad_id=tok.pad_id) for i in range(0, 16, 4)]
    policy = nn.Sequential(nn.Embedding(tok.vocab_size, 32), nn.Linear(32, tok.vocab_size))
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)
    loss_fn = DPOLoss(beta=0.1)

    def window() -> tuple[float, dict[str, float]]:
        """One optimizer step over all four micro-batches; the loss and metrics before it."""
        outputs = []
        for batch in batches:
            logps, num_tokens = sequence_logps(policy(batch["tokens"]), batch["labels"])
            with torch.no_grad():
                reference_logps, _ = sequence_logps(reference(batch["tokens"]), batch["labels"])
            out = loss_fn(logps, reference_logps, num_tokens)
            out.loss_sum.backward()
            outputs.append(out)
        num_pairs = sum(out.num_pairs for out in outputs)
        for p in policy.parameters():
            p.grad /= num_pairs
        optimizer.step()
        optimizer.zero_grad()
        loss = sum(out.loss_sum.item() for out in outputs) / num_pairs
        return loss, preference_metrics(outputs)

    first_loss, first = window()
    assert first_loss == pytest.approx(math.log(2))
    assert (first["rewards/margin"], first["rewards/accuracy"]) == (0.0, 0.0)
    for _ in range(15):
        loss, metrics = window()
    assert loss < 0.5 * math.log(2)
    assert metrics["rewards/margin"] > 1.0
    assert metrics["rewards/accuracy"] == 1.0
