"""GRPO: group-relative policy optimisation, the pieces a generated recipe's loop calls.

One step of a GRPO recipe (`train()` shows it whole):

1. sample `G` completions for each prompt from the current policy (`generation.sample`) and
   lay them out as token rows (`make_rollout`);
2. score every completion with the user's reward functions (`rewards.RewardFunctions`);
3. turn the rewards into advantages relative to the prompt's group (`group_advantages`);
4. take the log-probabilities of the sampled tokens under the policy (`token_logps`), the
   policy that sampled them and, when `beta > 0`, the frozen reference;
5. minimise the clipped token-level objective (`GRPOLoss`).

The objective follows TRL's `GRPOTrainer` (trl/trainer/grpo_trainer.py, `_compute_loss`), per
completion token t of completion i with the ratio r = exp(logp - old_logp):

    loss[i, t] = -min(r * A[i], clip(r, 1 - epsilon, 1 + epsilon) * A[i]) + beta * kl[i, t]
    kl[i, t]   = exp(ref_logp - logp) - (ref_logp - logp) - 1       (the k3 estimator, >= 0)

and the loss types differ in how the token losses are averaged (TRL's formulas):

    grpo:    mean over completions of (sum_t loss[i, t] / |o_i|)      (the DeepSeekMath paper)
    dapo:    sum_{i,t} loss[i, t] / sum_i |o_i|                        (token-level, DAPO)
    dr_grpo: sum_{i,t} loss[i, t] / (num completions * max_new_tokens)  (Dr. GRPO)

Advantages are `(r - mean(group)) / (std(group) + 1e-4)` (std with Bessel's correction, as
`torch.std`), except for `dr_grpo`, which drops the division by the std (Dr. GRPO's fix for its
difficulty bias). Whatever the loss type, a step's loss is normalised over the whole step (all
`grad_accum` micro-batches together), so accumulation does not change the objective: the loss
returns a sum and `normalizer()` the step's denominator.

A completion that reaches `max_new_tokens` without a stop token is truncated; with
`mask_truncated` it carries no loss (DAPO's overlong filtering, TRL's
`mask_truncated_completions`), so the model is not taught from text that was cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.errors import ConfigError

__all__ = [
    "LOSS_TYPES",
    "GRPOLoss",
    "GRPOOutput",
    "Rollout",
    "completion_samples",
    "group_advantages",
    "make_rollout",
    "mean_metrics",
    "repeat_for_groups",
    "rollout_metrics",
    "token_logps",
]

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)


class Rollout(NamedTuple):
    """A micro-batch of sampled completions laid out for the policy's forward pass.

    `tokens` (N, T) holds each prompt followed by its completion (and the stop token, when one
    ended it), right-padded; `labels` (N, T) the completion tokens at their positions and -100
    elsewhere (unshifted, as everywhere in the runtime). `truncated` (N,) marks completions that
    hit `max_new_tokens`; `lengths` (N,) counts each completion's generated tokens.
    `advantages`, `old_logps` and `reference_logps` are filled in by the recipe (`_replace`).
    """

    tokens: Tensor
    labels: Tensor
    truncated: Tensor
    lengths: Tensor
    advantages: Tensor | None = None
    old_logps: Tensor | None = None
    reference_logps: Tensor | None = None


def make_rollout(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_id: int,
    pad_id: int,
    device: torch.device | str = "cpu",
) -> Rollout:
    """Lay out `prompts[i] + completions[i]` as rows; the completion carries the labels.

    `completions` are new tokens without the stop token (as `generation.sample` returns them):
    one shorter than `max_new_tokens` ended at the stop token, which is appended so the model
    also learns where to stop; one of `max_new_tokens` tokens was cut off (`truncated`).
    """
    rows, label_rows, truncated = [], [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        cut = len(completion) >= max_new_tokens
        new = list(completion) if cut else [*completion, stop_id]
        rows.append([*prompt, *new])
        label_rows.append([IGNORE_INDEX] * len(prompt) + new)
        truncated.append(cut)
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        tokens[i, : len(row)] = torch.tensor(row)
        labels[i, : len(label_row)] = torch.tensor(label_row)
    return Rollout(
        tokens=tokens.to(device),
        labels=labels.to(device),
        truncated=torch.tensor(truncated, device=device),
        lengths=torch.tensor([len(c) for c in completions], device=device),
    )


def repeat_for_groups(batch: dict[str, Any], group_size: int) -> dict[str, Any]:
    """A collated prompt batch (`prompt_collate`) with each prompt repeated `group_size` times in
    a row, as its group's completions are: prompt_ids, prompts and every field column."""

    def repeat(values: Sequence[Any]) -> list[Any]:
        return [value for value in values for _ in range(group_size)]

    return {
        "prompt_ids": repeat(batch["prompt_ids"]),
        "prompts": repeat(batch["prompts"]),
        "fields": {name: repeat(column) for name, column in batch["fields"].items()},
    }


def group_advantages(rewards: Tensor, group_size: int, *, scale: bool = True) -> Tensor:
    """Each reward minus its group's mean, divided by the group's std + 1e-4 when `scale`.

    `rewards` (N,) holds groups of `group_size` consecutive completions of one prompt. A group
    whose completions all score the same gets zero advantages: it teaches nothing.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"expected rewards (N,) with N a multiple of group_size={group_size}, "
            f"got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # (num_prompts, G)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + STD_EPS)
    return advantages.reshape(-1)


def token_logps(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """The log-probability of each label token, (N, T-1), 0 where labels[:, t+1] is -100.

    The logits at position t score `labels[:, t + 1]`. They are divided by the sampling
    `temperature` first, so the log-probabilities are those of the distribution the completions
    were sampled from (as TRL does). Computed in fp32.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (N, T, V) and labels (N, T), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    rows, vocab_size = logits.shape[0], logits.shape[-1]
    scaled = logits[:, :-1, :].float() / temperature
    nll = F.cross_entropy(
        scaled.reshape(-1, vocab_size),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -nll.view(rows, -1)


class GRPOOutput(NamedTuple):
    """One micro-batch's loss and statistics, as sums (the recipe adds them over a step).

    `loss_sum` carries the gradient (divide by `GRPOLoss.normalizer` before `backward`); the rest
    are plain numbers over the completion tokens that carry loss (`num_tokens` of them):
    `kl_sum` (sum of per-token KL), `clipped` (tokens whose update the clip stopped).
    """

    loss_sum: Tensor
    kl_sum: float
    clipped: int
    num_tokens: int


class GRPOLoss(nn.Module):
    """The clipped token-level GRPO objective (see the module doc for the formulas).

    `variant` is the loss type (`grpo.loss_type`: grpo, dapo, dr_grpo); `epsilon` the clip
    range; `kl_beta` the weight of the KL to the reference (`grpo.beta`, 0: none);
    `max_new_tokens` dr_grpo's constant denominator; `mask_truncated` drops the loss of
    completions that hit `max_new_tokens`.
    """

    def __init__(
        self,
        *,
        variant: str = "grpo",
        epsilon: float = 0.2,
        kl_beta: float = 0.0,
        max_new_tokens: int,
        mask_truncated: bool = False,
    ) -> None:
        super().__init__()
        if variant not in LOSS_TYPES:
            raise ValueError(f"unknown GRPO loss type {variant!r} (known: {', '.join(LOSS_TYPES)})")
        self.variant = variant
        self.epsilon = epsilon
        self.kl_beta = kl_beta
        self.max_new_tokens = max_new_tokens
        self.mask_truncated = mask_truncated

    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        """Group-relative advantages as this loss type defines them (dr_grpo: not scaled)."""
        return group_advantages(rewards, group_size, scale=self.variant != "dr_grpo")

    def loss_mask(self, rollout: Rollout) -> Tensor:
        """(N, T-1) bool: the shifted positions whose token carries loss."""
        mask = rollout.labels[:, 1:] != IGNORE_INDEX
        if self.mask_truncated:
            mask = mask & ~rollout.truncated[:, None]
        return mask

    def normalizer(self, rollouts: Sequence[Rollout]) -> float:
        """The step's denominator: completions (grpo), loss tokens (dapo) or completions times
        max_new_tokens (dr_grpo), over every micro-batch of the step."""
        completions = sum(rollout.tokens.shape[0] for rollout in rollouts)
        if self.variant == "grpo":
            return float(completions)
        if self.variant == "dapo":
            return float(max(sum(int(self.loss_mask(r).sum()) for r in rollouts), 1))
        return float(completions * self.max_new_tokens)

    def forward(self, logps: Tensor, rollout: Rollout) -> GRPOOutput:
        """The loss sum of one micro-batch; `logps` (N, T-1) from `token_logps` of the policy.

        `rollout.old_logps` None means the completions were sampled by this very policy (one
        update per rollout): the ratio is exp(logp - logp.detach()) = 1, with its gradient.
        """
        mask = self.loss_mask(rollout).float()  # (N, T-1)
        old = rollout.old_logps if rollout.old_logps is not None else logps.detach()
        ratio = torch.exp(logps - old)
        advantages = rollout.advantages[:, None]  # (N, 1)
        clipped_ratio = torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon)
        per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
        kl = torch.zeros_like(logps)
        if self.kl_beta != 0:
            if rollout.reference_logps is None:
                raise ConfigError(
                    "grpo.beta: this recipe was generated without a reference model (spec "
                    "grpo.beta: 0); regenerate it with grpo.beta > 0 to use the KL term"
                )
            delta = rollout.reference_logps - logps
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + self.kl_beta * kl
        elif rollout.reference_logps is not None:
            delta = rollout.reference_logps - logps.detach()
            kl = torch.exp(delta) - delta - 1  # logged only
        if self.variant == "grpo":
            per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            loss_sum = per_sequence.sum()
        else:
            loss_sum = (per_token * mask).sum()
        # TRL's clip ratio: tokens in the region where the clip stops the gradient.
        region = ((ratio < 1 - self.epsilon) & (advantages < 0)) | (
            (ratio > 1 + self.epsilon) & (advantages > 0)
        )
        return GRPOOutput(
            loss_sum=loss_sum,
            kl_sum=float((kl.detach() * mask).sum()),
            clipped=int((region & mask.bool()).sum()),
            num_tokens=int(mask.sum()),
        )

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, epsilon={self.epsilon}, kl_beta={self.kl_beta}, "
            f"max_new_tokens={self.max_new_tokens}, mask_truncated={self.mask_truncated}"
        )


def rollout_metrics(
    rollouts: Sequence[Rollout], outputs: Sequence[GRPOOutput], rewards: Tensor
) -> dict[str, float]:
    """What a GRPO step logs besides the loss and the per-function rewards: the total reward's
    mean and std, completion length (mean, and the share truncated), KL to the reference and the
    share of clipped tokens."""
    lengths = torch.cat([r.lengths for r in rollouts]).float()
    truncated = torch.cat([r.truncated for r in rollouts]).float()
    tokens = max(sum(o.num_tokens for o in outputs), 1)
    return {
        "reward": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item() if rewards.numel() > 1 else 0.0,
        "completion_length": lengths.mean().item(),
        "truncated_fraction": truncated.mean().item(),
        "kl": sum(o.kl_sum for o in outputs) / tokens,
        "clip_fraction": sum(o.clipped for o in outputs) / tokens,
    }


def mean_metrics(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the micro-batches of a step (the reward functions' statistics)."""
    if not metrics:
        return {}
    return {key: sum(m[key] for m in metrics) / len(metrics) for key in metrics[0]}


def completion_samples(
    prompts: Sequence[Any], completions: Sequence[str], rewards: Tensor, *, count: int = 2
) -> list[str]:
    """A few `prompt -> completion (reward r)` lines for the log: the first `count` completions
    (one group's, so they share a prompt). Long prompts show only their end."""
    lines = []
    for prompt, completion, reward in zip(
        prompts[:count], completions[:count], rewards[:count].tolist(), strict=True
    ):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        text = text if len(text) <= 60 else "..." + text[-57:]
        lines.append(f"{text!r} -> {completion!r} (reward {reward:.3g})")
    return lines
