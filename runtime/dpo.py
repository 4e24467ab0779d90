"""DPO: learn from preference pairs directly, with a frozen copy of the model as the reference.

Direct preference optimisation (Rafailov et al., 2023) trains the policy so that, relative to a
frozen reference model, the chosen response of each pair gains log-probability over the rejected
one. Per pair, with log-probabilities summed over each response's tokens:

    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)

    sigmoid:  loss = -logsigmoid(beta h) (1 - eps) - logsigmoid(-beta h) eps
              (eps: label_smoothing, "conservative DPO"; eps = 0 is plain DPO)
    ipo:      loss = (h - 1 / (2 beta))^2                       (Azar et al., 2023)

IPO uses per-token mean log-probabilities instead of sums (as the IPO paper and TRL do), which is
why `DPOLoss` takes each row's token count. These are TRL's `DPOTrainer` formulas. The implicit
rewards are `beta (policy - reference)` for the chosen and for the rejected response (from the same
sums, or means for IPO); the reward margin and the share of pairs whose chosen reward is higher
("accuracy") are the numbers to watch during training.

As in `losses.py`, the loss is returned as a SUM over pairs with the pair count, so a recipe can
add both over a gradient-accumulation window and divide once, which is exact. A step looks like:

    batch = preference_collate(pairs, pad_id=...)  # (2B, T): chosen rows, then rejected rows
    policy_logps, num_tokens = sequence_logps(model(tokens), labels)
    with torch.no_grad():
        reference_logps, _ = sequence_logps(reference(tokens), labels)
    out = loss_fn(policy_logps, reference_logps, num_tokens)  # DPOOutput
    out.loss_sum.backward()  # then, per window: grads / sum(num_pairs); log preference_metrics
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import out_of_bounds

__all__ = ["LOSS_TYPES", "DPOLoss", "DPOOutput", "preference_metrics", "sequence_logps"]

LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Per row: the summed log-probability of its label tokens, and how many there are.

    `logits` (N, T, V) and unshifted `labels` (N, T), shifted as in `CrossEntropyLoss`: the logits
    at position t score `labels[:, t + 1]`. Positions labelled `ignore_index` (prompt, padding)
    count for nothing. Computed in fp32 whatever the logits' dtype. Returns `(logps, num_tokens)`,
    fp32 and int64 tensors of shape (N,).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (N, T, V) and labels (N, T), got {tuple(logits.shape)}"
            f" and {tuple(labels.shape)}"
        )
    rows, vocab_size = logits.shape[0], logits.shape[-1]
    targets = labels[:, 1:].long()  # (N, T-1)
    # cross_entropy is log_softmax + gather without keeping the log-softmax, and gives 0 where
    # the target is ignored.
    nll = F.cross_entropy(
        logits[:, :-1, :].reshape(-1, vocab_size).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    logps = -nll.view(rows, -1).sum(dim=-1)
    return logps, (targets != ignore_index).sum(dim=-1)


class DPOOutput(NamedTuple):
    """What `DPOLoss` returns for a batch of B pairs."""

    loss_sum: Tensor  # fp32 scalar: the loss summed over the pairs
    num_pairs: int  # B
    chosen_rewards: Tensor  # (B,) beta * (policy - reference) of the chosen responses, detached
    rejected_rewards: Tensor  # (B,) the same for the rejected responses, detached


class DPOLoss(nn.Module):
    """The DPO (`sigmoid`) or IPO (`ipo`) loss of a batch of pairs; see the module docstring.

    `beta` sets how far the policy may move from the reference: a larger beta keeps it closer
    for DPO, and aims IPO's margin `h` at 1 / (2 beta). `label_smoothing` (in [0, 0.5]) is the
    assumed share of pairs labelled the wrong way round (conservative DPO); `sigmoid` only.
    """

    def __init__(
        self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        # The spec's rules and wording (the pre-flight checks them first), for direct callers.
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        for name, value, bounds in (
            ("beta", beta, {"gt": 0}),
            ("label_smoothing", label_smoothing, {"ge": 0, "le": 0.5}),
        ):
            problem = out_of_bounds(value, **bounds)
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
        if label_smoothing and loss_type != "sigmoid":
            raise ValueError(
                f"label_smoothing applies to loss_type 'sigmoid' only, not {loss_type!r}"
            )
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing

    def forward(
        self, policy_logps: Tensor, reference_logps: Tensor, num_tokens: Tensor
    ) -> DPOOutput:
        """Loss of B pairs from (2B,) tensors: rows 0..B-1 chosen, B..2B-1 rejected.

        `policy_logps` and `reference_logps` are `sequence_logps` of the policy and the reference
        model on a `preference_collate` batch, `num_tokens` its token counts. No gradient reaches
        the reference.
        """
        _check_rows(policy_logps, reference_logps, num_tokens)
        policy, reference = policy_logps.float(), reference_logps.detach().float()
        if self.loss_type == "ipo":
            per_row = num_tokens.clamp(min=1).to(policy.dtype)
            policy, reference = policy / per_row, reference / per_row
        policy_chosen, policy_rejected = policy.chunk(2)
        reference_chosen, reference_rejected = reference.chunk(2)
        h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
        return DPOOutput(
            loss_sum=self._losses(h).sum(),
            num_pairs=h.shape[0],
            chosen_rewards=self.beta * (policy_chosen - reference_chosen).detach(),
            rejected_rewards=self.beta * (policy_rejected - reference_rejected).detach(),
        )

    def _losses(self, h: Tensor) -> Tensor:
        """Per-pair losses from the log-ratio differences `h` (B,)."""
        if self.loss_type == "ipo":
            return (h - 1 / (2 * self.beta)) ** 2
        smoothing = self.label_smoothing
        return (
            -F.logsigmoid(self.beta * h) * (1 - smoothing)
            - F.logsigmoid(-self.beta * h) * smoothing
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, loss_type={self.loss_type!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


def preference_metrics(outputs: Sequence[DPOOutput]) -> dict[str, float]:
    """Reward metrics over every pair of `outputs` (e.g. a gradient-accumulation window).

    `rewards/chosen` and `rewards/rejected` are the mean rewards, `rewards/margin` the mean of
    chosen - rejected, and `rewards/accuracy` the share of pairs whose chosen reward is higher.
    Pairs count equally, whichever micro-batch they came from. One device sync in all.
    """
    if not outputs:
        raise ValueError("preference_metrics needs at least one DPOOutput")
    chosen = torch.cat([out.chosen_rewards for out in outputs]).float()
    rejected = torch.cat([out.rejected_rewards for out in outputs]).float()
    margin = chosen - rejected
    means = torch.stack(
        [chosen.mean(), rejected.mean(), (margin > 0).float().mean(), margin.mean()]
    )
    names = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")
    return dict(zip(names, means.tolist(), strict=True))


def _check_rows(policy_logps: Tensor, reference_logps: Tensor, num_tokens: Tensor) -> None:
    shapes = {tuple(t.shape) for t in (policy_logps, reference_logps, num_tokens)}
    shape = next(iter(shapes))
    if len(shapes) != 1 or len(shape) != 1 or shape[0] % 2 or shape[0] == 0:
        raise ValueError(
            "expected policy_logps, reference_logps and num_tokens of one shape (2B,): chosen "
            f"rows then rejected rows; got {tuple(policy_logps.shape)}, "
            f"{tuple(reference_logps.shape)} and {tuple(num_tokens.shape)}"
        )
