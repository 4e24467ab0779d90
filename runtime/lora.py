"""LoRA (low-rank adaptation) by composition: swap chosen `nn.Linear` layers for `LoRALinear`.

A `LoRALinear` keeps the base layer's `weight` and `bias` under nn.Linear's names and adds two
small layers, `lora_a` (in -> rank) and `lora_b` (rank -> out), so

    y = x @ W.T + b + scaling * lora_b(lora_a(dropout(x))),    scaling = alpha / rank

DoRA (weight-decomposed low-rank adaptation, Liu et al. 2024, arXiv:2402.09353), switched on with
`use_dora=True`, splits the adapted weight into a direction and a per-output-row length, and
trains the length separately as `magnitude` (out,):

    W' = m * (W + scaling * B @ A) / ||W + scaling * B @ A||_row

LoRA can only change a row's length and direction together; DoRA learns them apart, which the
paper finds closer to full fine-tuning at the same rank for the cost of one extra vector per layer
and one weight norm per forward. `m` starts at ||W||_row, so a fresh DoRA layer is the base layer.
As in the paper (section 4.3) and PEFT, the norm is treated as a constant: no gradient flows
through it. The forward computes the same as PEFT's `DoraLinearLayer`. `m` is computed from W as
it is when DoRA is applied, so apply it after casting the model to its training dtype (and after
NF4 quantization): a later cast rounds m and the norm differently, which moves a fresh layer off
the base layer by up to one rounding step (in bf16, a factor of 1 +- 2^-7 on some rows).

Because the base names are unchanged, a base checkpoint loads into a LoRA model without key
remapping, and the adapter weights are exactly the `*.lora_a.weight` / `*.lora_b.weight` (and
DoRA's `*.magnitude`) keys. Freezing, merging, disabling and extracting the adapter are free
functions over any model, so no model class needs a LoRA twin.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import is_dense

__all__ = [
    "LoRALinear",
    "apply_lora",
    "dense_weight",
    "disable_adapters",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
    "unmerge_lora",
]


def dense_weight(weight: Tensor) -> Tensor:
    """`weight` as a plain tensor: a quantized base weight (torchao's NF4Tensor, for QLoRA)
    supports `F.linear` but no arithmetic, so it is dequantized; any other weight is returned."""
    dequantize = getattr(weight, "get_original_weight", None)
    return dequantize() if callable(dequantize) else weight


class _LoRAFunction(torch.autograd.Function):
    """x @ W.T + b + scaling * (x @ A.T) @ B.T for a frozen dense W, with a hand-written backward.

    Autograd computes the same products, but two of its rank-r ones (g @ B and g.T @ (x @ A.T))
    in the operand layout MKL runs 2.4-2.8x slower on CPU, adds the update's input gradient to
    the base's in a separate pass, and copies the output once more for the update's sum. Here
    each product is taken in its fast layout and both sums ride on an `addmm_`. On a 512 x 512
    layer over 4 x 256 rows, forward + backward: 6.9 ms against autograd's 7.4-8.4 ms and the
    frozen base layer's 5.8 ms (docs/benchmarks.md). Dropout, DoRA and NF4 weights keep the
    module path.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,  # (..., in)
        weight: Tensor,  # (out, in), frozen
        bias: Tensor | None,  # (out,), frozen
        lora_a: Tensor,  # (r, in)
        lora_b: Tensor,  # (out, r)
        scaling: float,
    ) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        h = rows @ lora_a.t()  # (N, r)
        y = F.linear(rows, weight, bias).addmm_(h, lora_b.t(), alpha=scaling)  # (N, out)
        ctx.save_for_backward(x, weight, lora_a, lora_b, h)
        ctx.scaling = scaling
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, lora_a, lora_b, h = ctx.saved_tensors
        want_x, _, _, want_a, want_b, _ = ctx.needs_input_grad
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        g = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = grad_a = grad_b = None
        if want_x or want_a:
            grad_h = g @ lora_b.t().contiguous().t()  # (N, r), B as the transpose of (r, out)
        if want_x:
            grad_x = (g @ weight).addmm_(grad_h, lora_a, alpha=ctx.scaling).view(x.shape)
        if want_a:
            grad_a = (grad_h.t() @ rows).mul_(ctx.scaling)  # (r, in)
        if want_b:
            grad_b = (h.t() @ g).mul_(ctx.scaling).t().contiguous()  # (out, r)
        return grad_x, None, None, grad_a, grad_b, None


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (and, with DoRA, a magnitude).

    `lora_b` starts at zero (and DoRA's `magnitude` at the base weight's row norms), so a freshly
    wrapped model computes exactly what the base model did. `merge()` folds the update into
    `weight` for inference or export; `unmerge()` takes it out. While `disabled` is set (see
    `disable_adapters`) the layer computes the base layer alone.
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
        use_dora: bool = False,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features = in_dim
        self.out_features = out_dim
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.use_dora = use_dora
        self.merged = False
        self.disabled = False
        # The base layer: initialised like nn.Linear, then frozen.
        base = nn.Linear(in_dim, out_dim, bias=bias)
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(base.bias.detach(), requires_grad=False) if bias else None
        # Dropout sees only the LoRA branch's input; the base path stays deterministic.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.magnitude = nn.Parameter(torch.empty(out_dim)) if use_dora else None
        # DoRA's row norms at merge time, which unmerge() divides out again (not checkpointed).
        self.register_buffer("_merge_norm", None, persistent=False)
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A as PEFT initialises it (kaiming-uniform, a=sqrt(5)); B zero, so the update starts at 0;
        DoRA's magnitude the row norms of W, so the direction is rescaled to its own length."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        if self.magnitude is not None:
            # Computed as forward() computes the norm, so the DoRA scale is exactly 1 at init.
            self.magnitude.copy_(self.weight_norm(self.magnitude.dtype))

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_dora: bool = False,
    ) -> LoRALinear:
        """Wrap `linear`, sharing (not copying) its weight and bias and matching device, dtype and
        train/eval mode.

        The shared parameters are frozen in place: they belong to the base model.
        """
        # Build on the meta device so no throwaway base weight is allocated, then adopt the base
        # parameters and materialise only the small adapter tensors where the base weight lives.
        with torch.device("meta"):
            lora = cls(
                linear.in_features,
                linear.out_features,
                rank=rank,
                alpha=alpha,
                dropout=dropout,
                bias=linear.bias is not None,
                use_dora=use_dora,
            )
        lora.weight = linear.weight.requires_grad_(False)
        lora.bias = None if linear.bias is None else linear.bias.requires_grad_(False)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        lora.lora_a = nn.Linear(linear.in_features, rank, bias=False, **factory)
        lora.lora_b = nn.Linear(rank, linear.out_features, bias=False, **factory)
        if use_dora:
            lora.magnitude = nn.Parameter(torch.empty(linear.out_features, **factory))
        lora.reset_lora_parameters()
        return lora.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self.disabled:  # the update is inside `weight`, or switched off
            return F.linear(x, self.weight, self.bias)  # (..., out)
        if self._plain_lora():
            return _LoRAFunction.apply(
                x, self.weight, self.bias, self.lora_a.weight, self.lora_b.weight, self.scaling
            )  # (..., out)
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.magnitude is not None:
            return y + self._dora_update(x, y)
        return self._add_update(y, self.lora_a(self.dropout(x)))  # (..., out)

    def _plain_lora(self) -> bool:
        """LoRA without dropout on a frozen dense weight: what `_LoRAFunction` computes (not DoRA,
        not NF4, and not a base weight or bias someone made trainable again)."""
        frozen = not any(p.requires_grad for p in (self.weight, self.bias) if p is not None)
        dense = is_dense(self.weight)
        return frozen and dense and self.magnitude is None and isinstance(self.dropout, nn.Identity)

    def _add_update(self, y: Tensor, h: Tensor) -> Tensor:
        """y + scaling * h @ B.T as one addmm: the scale and the sum ride on the matmul.

        Written as `y + lora_b(h) * scaling`, each is an elementwise pass over the full
        (..., out) output, forward and backward, which made LoRA barely faster than full
        fine-tuning on CPU; here the only work beyond the two small matmuls is the matmul's
        own accumulate into a copy of y.
        """
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]),  # (N, out)
            h.reshape(-1, h.shape[-1]),  # (N, rank)
            self.lora_b.weight.t(),  # (rank, out)
            alpha=self.scaling,
        )
        return out.view(y.shape)

    def _dora_update(self, x: Tensor, y: Tensor) -> Tensor:
        """DoRA's output minus the base output `y`, as PEFT's `DoraLinearLayer.forward`:

            (m / ||W + s B A|| - 1) * x @ W.T + (m / ||W + s B A||) * s * B(A(x))

        The bias is not rescaled. With dropout active the first term, too, sees the dropped-out x.
        """
        scale = self.magnitude / self.weight_norm(x.dtype)  # (out,), a constant for autograd
        if self.training and isinstance(self.dropout, nn.Dropout):
            x = self.dropout(x)
            base = F.linear(x, self.weight)  # (..., out)
        else:
            base = y if self.bias is None else y - self.bias
        lora = self.lora_b(self.lora_a(x))  # (..., out)
        return (scale - 1) * base + scale * lora * self.scaling

    @torch.no_grad()
    def weight_norm(self, dtype: torch.dtype) -> Tensor:
        """DoRA's ||W + scaling * B @ A|| per output row, (out,), computed in `dtype` and without
        gradient: the paper (section 4.3) and PEFT treat it as a constant."""
        update = (self.lora_b.weight @ self.lora_a.weight).to(dtype)  # (out, in)
        weight = dense_weight(self.weight).to(dtype) + self.scaling * update
        return torch.linalg.norm(weight, dim=1).to(dtype)

    def delta_weight(self) -> Tensor:
        """What merging adds to `weight`, shaped like it (out, in): scaling * B @ A for LoRA, and
        for DoRA (m / ||W + scaling * B @ A||) * (W + scaling * B @ A) - W. Valid while unmerged.
        """
        update = (self.lora_b.weight @ self.lora_a.weight) * self.scaling
        if self.magnitude is None:
            return update
        weight = dense_weight(self.weight).float()
        merged = self._dora_merged(weight, self.weight_norm(torch.float32))
        return (merged - weight).to(update.dtype)

    def _dora_merged(self, weight: Tensor, norm: Tensor) -> Tensor:
        """(m / norm) * (weight + scaling * B @ A) in fp32, for a dense fp32 `weight`."""
        update = (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scaling
        return (self.magnitude.float() / norm).unsqueeze(1) * (weight + update)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into `weight` (in place; no-op if already merged).

        `weight` is shared with the base model, so the base model sees the merged weight too.
        DoRA merges in fp32 and keeps the row norms, which `unmerge()` needs. In bf16/fp16 a merge
        followed by `unmerge()` is only approximately the identity.
        """
        if self.merged:
            return
        if self.disabled:
            raise ValueError("cannot merge a LoRA layer while its adapter is disabled")
        if self.magnitude is None:
            self.weight += self.delta_weight().to(self.weight.dtype)
        else:
            self._merge_norm = self.weight_norm(torch.float32)
            merged = self._dora_merged(self.weight.float(), self._merge_norm)
            self.weight.copy_(merged.to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of `weight` again (no-op if not merged)."""
        if not self.merged:
            return
        if self.magnitude is None:
            self.weight -= self.delta_weight().to(self.weight.dtype)
        else:
            # W' = (m / n) * (W + sBA)  =>  W = W' * n / m - sBA, with n the norm at merge time.
            update = (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scaling
            scale = (self._merge_norm / self.magnitude.float()).unsqueeze(1)
            self.weight.copy_((self.weight.float() * scale - update).to(self.weight.dtype))
            self._merge_norm = None
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha}, "
            f"use_dora={self.use_dora}, merged={self.merged}"
        )


def apply_lora(
    model: nn.Module,
    *,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    use_dora: bool = False,
) -> list[str]:
    """Replace, in place, every `nn.Linear` whose attribute name is in `targets` with a LoRALinear
    (a DoRA one with `use_dora=True`).

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
        module = LoRALinear.from_linear(
            child, rank=rank, alpha=alpha, dropout=dropout, use_dora=use_dora
        )
        setattr(parent, name, module)
    return [path for _, _, _, path in found]


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, LoRALinear)]


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the `lora_a` / `lora_b` weights and DoRA's `magnitude`."""
    for param in model.parameters():
        param.requires_grad_(False)
    for _, module in _lora_modules(model):
        module.lora_a.weight.requires_grad_(True)
        module.lora_b.weight.requires_grad_(True)
        if module.magnitude is not None:
            module.magnitude.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter weights, keyed as in `model.state_dict()` (e.g. `...q_proj.lora_a.weight`,
    and `...q_proj.magnitude` for DoRA layers).

    Load them back with `model.load_state_dict(sd, strict=False)` after `apply_lora`.
    """
    state: dict[str, Tensor] = {}
    for path, module in _lora_modules(model):
        state[f"{path}.lora_a.weight"] = module.lora_a.weight.detach()
        state[f"{path}.lora_b.weight"] = module.lora_b.weight.detach()
        if module.magnitude is not None:
            state[f"{path}.magnitude"] = module.magnitude.detach()
    return state


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (see `LoRALinear.merge`)."""
    for _, module in _lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora` on every LoRALinear."""
    for _, module in _lora_modules(model):
        module.unmerge()


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Inside the `with` block every LoRALinear (LoRA or DoRA) computes its base layer alone.

    The base model without a copy of its weights, e.g. DPO's frozen reference model:

        with torch.no_grad(), disable_adapters(policy):
            reference_logits = policy(tokens)

    The previous state comes back on exit, exception or not. Raises ValueError if the model has no
    LoRA layers (it would be its own "base") or has merged ones (their base weight is gone). Under
    activation checkpointing, backpropagate inside the block what was computed inside it: the
    recomputed forward would otherwise run with the adapters.
    """
    modules = _lora_modules(model)
    if not modules:
        raise ValueError("disable_adapters: the model has no LoRA layers")
    merged = [path for path, module in modules if module.merged]
    if merged:
        raise ValueError(f"disable_adapters: unmerge these LoRA layers first: {', '.join(merged)}")
    previous = [module.disabled for _, module in modules]
    try:
        for _, module in modules:
            module.disabled = True
        yield
    finally:
        for (_, module), was in zip(modules, previous, strict=True):
            module.disabled = was
