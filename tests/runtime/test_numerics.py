"""The NaN/inf guard that generated training loops call before each optimizer step."""

from __future__ import annotations

import math

import pytest

from tunegen.runtime.errors import TunegenError
from tunegen.runtime.numerics import NonFiniteLossError, check_finite_loss


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_with_the_step(loss):
    with pytest.raises(NonFiniteLossError, match=r"^step 7: the loss is (nan|inf|-inf); stopped"):
        check_finite_loss(loss, step=7)
    assert issubclass(NonFiniteLossError, TunegenError)  # one line on stderr, exit status 2


def test_finite_loss_passes():
    check_finite_loss(0.0, step=1)
    check_finite_loss(1e30, step=1)
