"""The distillation loss: forward KL on the target positions, with temperature."""

from __future__ import annotations

import math

import pytest
import torch

from tunegen.runtime.distillation import ForwardKLLoss
from tunegen.runtime.losses import CrossEntropyLoss


def direct_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float):
    """KL(p_t || p_s) summed over the positions whose next label is a target, written out."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for pos in range(labels.shape[1] - 1):
            if labels[b, pos + 1] == -100:
                continue
            p = torch.softmax(teacher[b, pos].double() / t, -1)
            q = torch.softmax(student[b, pos].double() / t, -1)
            total += float((p * (p.log() - q.log())).sum()) * t * t
            count += 1
    return total, count


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_the_definition_on_target_positions(temperature: float) -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, -100, -100, -100]])
    kl, count = ForwardKLLoss(temperature)(student, teacher, labels)
    expected, expected_count = direct_kl(student, teacher, labels, temperature)
    assert int(count) == expected_count == 5
    assert float(kl) == pytest.approx(expected, rel=1e-5)


def test_zero_when_the_student_is_the_teacher_and_counts_like_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, :3] = -100
    kl, count = ForwardKLLoss(2.0)(logits, logits.clone(), labels)
    assert float(kl) == pytest.approx(0.0, abs=1e-5)
    assert int(count) == int(CrossEntropyLoss()(logits, labels)[1])


def test_gradients_reach_the_student_only_and_lower_the_kl() -> None:
    torch.manual_seed(2)
    student = torch.randn(1, 4, 9, requires_grad=True)
    teacher = torch.randn(1, 4, 9, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3]])
    loss_fn = ForwardKLLoss()
    kl, _ = loss_fn(student, teacher.detach(), labels)
    kl.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    with torch.no_grad():
        stepped = student - 0.5 * student.grad
    assert float(loss_fn(stepped, teacher.detach(), labels)[0]) < float(kl.detach())


def test_bf16_logits_give_an_fp32_loss_and_mismatched_vocabularies_fail() -> None:
    logits = torch.randn(1, 3, 5).bfloat16()
    kl, _ = ForwardKLLoss()(logits, logits + 1, torch.tensor([[0, 1, 2]]))
    assert kl.dtype == torch.float32 and math.isclose(float(kl), 0.0, abs_tol=1e-3)
    with pytest.raises(ValueError, match="same vocabulary"):
        ForwardKLLoss()(torch.randn(1, 3, 5), torch.randn(1, 3, 6), torch.tensor([[0, 1, 2]]))
