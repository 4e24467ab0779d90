"""Knowledge distillation: the student learns the teacher's whole next-token distribution.

Cross-entropy on the data teaches the student which token came next; the teacher's logits also say
how likely every other token was, which is far more signal per token. The recipe trains on

    loss = (1 - w) * cross_entropy(student, labels) + w * KL(teacher || student)

The KL is the forward one, KL(p_teacher || p_student) = sum_v p_t(v) * (log p_t(v) - log p_s(v)):
it is zero exactly when the student matches the teacher, so it also serves as the progress metric.
Both distributions are softened by a temperature T, and the KL is scaled by T^2 so its gradients
keep the same size whatever T is (Hinton et al., 2015).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import out_of_bounds

__all__ = ["ForwardKLLoss"]


class ForwardKLLoss(nn.Module):
    """KL(teacher || student) per target token, returned as `(kl_sum, num_tokens)`.

    Like `CrossEntropyLoss`, it takes unshifted labels (-100 = no loss) and compares the logits at
    position t (which predict token t + 1) wherever `labels[:, t + 1]` is a target, so the KL and
    the cross-entropy are taken at the same positions and accumulate the same way. Computed in
    fp32 whatever the logits' dtype.
    """

    def __init__(self, temperature: float = 1.0, ignore_index: int = -100) -> None:
        super().__init__()
        problem = out_of_bounds(
            temperature, gt=0
        )  # the spec's rule and wording, for direct callers
        if problem is not None:
            raise ValueError(f"temperature: {problem}")
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return the summed KL over target positions (fp32 scalar) and their count."""
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits "
                f"{tuple(teacher_logits.shape)} differ: distillation needs the same vocabulary"
            )
        targets = labels[:, 1:] != self.ignore_index  # (B, T-1)
        student = student_logits[:, :-1][targets].float() / self.temperature  # (N, V)
        teacher = teacher_logits[:, :-1][targets].float() / self.temperature  # (N, V)
        teacher_log_probs = F.log_softmax(teacher, dim=-1)
        student_log_probs = F.log_softmax(student, dim=-1)
        kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum")
        return kl * self.temperature**2, targets.sum()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, ignore_index={self.ignore_index}"
