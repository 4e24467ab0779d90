"""Learning-rate schedules: exact values at warmup, peak and end, and parity with transformers."""

from __future__ import annotations

import io
import math

import pytest
import torch

from tunegen.runtime.errors import ConfigError
from tunegen.runtime.schedulers import (
    constant_with_warmup,
    cosine_with_warmup,
    linear_with_warmup,
)

LR = 1e-3


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def lrs(make, steps: int, **kwargs) -> list[float]:
    """The lr used by optimizer steps 0..steps-1."""
    opt = optimizer()
    scheduler = make(opt, **kwargs)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return values


def test_cosine_values() -> None:
    values = lrs(cosine_with_warmup, 14, warmup_steps=2, total_steps=10)
    assert values[0] == 0.0
    assert values[1] == pytest.approx(LR / 2)
    assert values[2] == pytest.approx(LR)  # peak at the end of warmup
    assert values[6] == pytest.approx(LR / 2)  # halfway through the decay
    assert values[4] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert values[10] == pytest.approx(0.0, abs=1e-12)
    assert values[13] == pytest.approx(0.0, abs=1e-12)  # stays at the floor past total_steps


def test_cosine_min_lr_ratio() -> None:
    values = lrs(cosine_with_warmup, 12, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    assert values[0] == 0.0  # warmup still starts from zero
    assert values[2] == pytest.approx(LR)
    assert values[6] == pytest.approx(LR * (0.1 + 0.9 * 0.5))
    assert values[10] == pytest.approx(LR * 0.1)
    assert values[11] == pytest.approx(LR * 0.1)


def test_linear_values() -> None:
    values = lrs(linear_with_warmup, 12, warmup_steps=4, total_steps=10, min_lr_ratio=0.0)
    assert values[:5] == pytest.approx([0.0, LR / 4, LR / 2, 3 * LR / 4, LR])
    assert values[7] == pytest.approx(LR / 2)
    assert values[10] == pytest.approx(0.0, abs=1e-12)
    assert values[11] == pytest.approx(0.0, abs=1e-12)


def test_linear_min_lr_ratio() -> None:
    values = lrs(linear_with_warmup, 11, warmup_steps=0, total_steps=10, min_lr_ratio=0.2)
    assert values[0] == pytest.approx(LR)  # no warmup: the first step uses the full lr
    assert values[5] == pytest.approx(LR * 0.6)
    assert values[10] == pytest.approx(LR * 0.2)


def test_constant_values() -> None:
    values = lrs(constant_with_warmup, 8, warmup_steps=2, total_steps=5)
    assert values == pytest.approx([0.0, LR / 2] + [LR] * 6)
    assert lrs(constant_with_warmup, 2, warmup_steps=0, total_steps=5) == pytest.approx([LR, LR])


def test_schedules_are_interchangeable() -> None:
    kwargs = {"warmup_steps": 1, "total_steps": 3}
    for make in (cosine_with_warmup, linear_with_warmup, constant_with_warmup):
        assert isinstance(make(optimizer(), **kwargs), torch.optim.lr_scheduler.LambdaLR)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": -1, "total_steps": 10}, "warmup_steps: must be at least 0, got -1"),
        ({"warmup_steps": 0, "total_steps": 0}, "total_steps: must be at least 1, got 0"),
        (
            {"warmup_steps": 20, "total_steps": 10},
            "training.warmup_steps: 20 warmup steps exceed the run's 10 steps; lower "
            r"training.warmup_steps or lengthen the run \(training.max_steps\)",
        ),
        (
            {"warmup_steps": 1, "total_steps": 10, "min_lr_ratio": 1.5},
            "min_lr_ratio: must be at most 1, got 1.5",
        ),
        ({"warmup_steps": 1.0, "total_steps": 10}, "warmup_steps must be an integer"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cosine_with_warmup(optimizer(), **kwargs)


def test_state_dict_loads_with_weights_only() -> None:
    opt = optimizer()
    scheduler = cosine_with_warmup(opt, warmup_steps=2, total_steps=10)
    for _ in range(3):
        opt.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)

    fresh_opt = optimizer()
    fresh = cosine_with_warmup(fresh_opt, warmup_steps=2, total_steps=10)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh_opt.step()
    fresh.step()
    opt.step()
    scheduler.step()
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_matches_transformers() -> None:
    optimization = pytest.importorskip("transformers.optimization")
    cases = [
        (cosine_with_warmup, optimization.get_cosine_schedule_with_warmup, {}),
        (linear_with_warmup, optimization.get_linear_schedule_with_warmup, {}),
    ]
    for ours, theirs, extra in cases:
        opt = optimizer()
        reference = theirs(opt, num_warmup_steps=3, num_training_steps=12, **extra)
        expected = []
        for _ in range(13):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            reference.step()
        assert lrs(ours, 13, warmup_steps=3, total_steps=12) == pytest.approx(expected, abs=1e-12)

    opt = optimizer()
    reference = optimization.get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=3, num_training_steps=12, min_lr_rate=0.1
    )
    expected = []
    for _ in range(13):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    got = lrs(cosine_with_warmup, 13, warmup_steps=3, total_steps=12, min_lr_ratio=0.1)
    assert got == pytest.approx(expected, abs=1e-12)
