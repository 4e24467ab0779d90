"""LoRA (low-rank adaptation) by composition: swap chosen `nn.Linear` layers for `LoRALinear`.

A `LoRALinear` keeps the base layer's `weight` and `bias` under nn.Linear's names and adds two
small layers, `lora_a` (in -> rank) and `lora_b` (rank -> out), so

    y = x @ W.T + b + scaling * lora_b(lora_a(dropout(x))),    scaling = alpha / rank

Because the base names are unchanged, a base checkpoint loads into a LoRA model without key
remapping, and the LoRA weights are exactly the `*.lora_a.weight` / `*.lora_b.weight` keys.
Freezing, merging and extracting the adapter are free functions over any model, so no model class
needs a LoRA twin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LoRALinear",
    "apply_lora",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
    "unmerge_lora",
]


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    `lora_b` starts at zero, so a freshly wrapped model computes exactly what the base model did.
    `merge()` folds the update into `weight` for inference or export; `unmerge()` takes it out.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features = in_dim
        self.out_features = out_dim
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.merged = False
        # The base layer: initialised like nn.Linear, then frozen.
        base = nn.Linear(in_dim, out_dim, bias=bias)
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(base.bias.detach(), requires_grad=False) if bias else None
        # Dropout sees only the LoRA branch's input; the base path stays deterministic.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A as PEFT initialises it (kaiming-uniform, a=sqrt(5)); B zero, so the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0
    ) -> LoRALinear:
        """Wrap `linear`, sharing (not copying) its weight and bias and matching device and dtype.

        The shared parameters are frozen in place: they belong to the base model.
        """
        # Build on the meta device so no throwaway base weight is allocated, then adopt the base
        # parameters and materialise only the small LoRA matrices where the base weight lives.
        with torch.device("meta"):
            lora = cls(
                linear.in_features,
                linear.out_features,
                rank=rank,
                alpha=alpha,
                dropout=dropout,
                bias=linear.bias is not None,
            )
        lora.weight = linear.weight.requires_grad_(False)
        lora.bias = None if linear.bias is None else linear.bias.requires_grad_(False)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        lora.lora_a = nn.Linear(linear.in_features, rank, bias=False, **factory)
        lora.lora_b = nn.Linear(rank, linear.out_features, bias=False, **factory)
        lora.reset_lora_parameters()
        return lora

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:  # the update is already inside `weight`
            return y
        return y + self.lora_b(self.lora_a(self.dropout(x))) * self.scaling  # (..., out)

    def delta_weight(self) -> Tensor:
        """The low-rank update B @ A * scaling, shaped like `weight` (out, in)."""
        return (self.lora_b.weight @ self.lora_a.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into `weight` (in place; no-op if already merged).

        `weight` is shared with the base model, so the base model sees the merged weight too.
        In bf16/fp16 a merge followed by `unmerge()` is only approximately the identity.
        """
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from `weight` again (no-op if not merged)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha}, "
            f"merged={self.merged}"
        )


def apply_lora(
    model: nn.Module,
    *,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
) -> list[str]:
    """Replace, in place, every `nn.Linear` whose attribute name is in `targets` with a LoRALinear.

    Returns the dotted paths of the replaced modules in model order. Raises ValueError naming every
    target that matched no `nn.Linear`, so a typo in a spec cannot silently train nothing.
    """
    if not targets:
        raise ValueError("apply_lora needs at least one target layer name")
    wanted = set(targets)
    # Collect first, then replace: the module tree must not change while it is being walked.
    found = [
        (parent, name, child, f"{parent_path}.{name}" if parent_path else name)
        for parent_path, parent in model.named_modules()
        for name, child in parent.named_children()
        if name in wanted and isinstance(child, nn.Linear)
    ]
    missing = [t for t in dict.fromkeys(targets) if t not in {name for _, name, _, _ in found}]
    if missing:
        raise ValueError(f"LoRA target(s) matched no nn.Linear in the model: {', '.join(missing)}")
    for parent, name, child, _ in found:
        setattr(
            parent, name, LoRALinear.from_linear(child, rank=rank, alpha=alpha, dropout=dropout)
        )
    return [path for _, _, _, path in found]


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, LoRALinear)]


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the `lora_a` / `lora_b` weights."""
    for param in model.parameters():
        param.requires_grad_(False)
    for _, module in _lora_modules(model):
        module.lora_a.weight.requires_grad_(True)
        module.lora_b.weight.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter weights, keyed as in `model.state_dict()` (e.g. `...q_proj.lora_a.weight`).

    Load them back with `model.load_state_dict(sd, strict=False)` after `apply_lora`.
    """
    state: dict[str, Tensor] = {}
    for path, module in _lora_modules(model):
        state[f"{path}.lora_a.weight"] = module.lora_a.weight.detach()
        state[f"{path}.lora_b.weight"] = module.lora_b.weight.detach()
    return state


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (see `LoRALinear.merge`)."""
    for _, module in _lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora` on every LoRALinear."""
    for _, module in _lora_modules(model):
        module.unmerge()
