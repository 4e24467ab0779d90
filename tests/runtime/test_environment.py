"""Device and dtype resolution, seeding, and RNG state that survives a weights_only checkpoint."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import tunegen.runtime.environment as environment
from tunegen.runtime.environment import (
    resolve_device,
    resolve_dtype,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tunegen.runtime.errors import ConfigError

CPU = torch.device("cpu")


def draws() -> tuple[float, float, list[float]]:
    """One draw from each generator the runtime manages."""
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_auto_and_cpu_devices() -> None:
    assert resolve_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_unavailable_cuda_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_device(name)
    assert str(error.value) == (f"environment.device: {name!r} requested but CUDA is not available")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_unavailable_mps_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'mps' requested but MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "meta", ""])
def test_unknown_devices_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^environment\.device: .* use auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_dtypes_on_cpu() -> None:
    assert resolve_dtype("fp32", CPU) is torch.float32
    assert resolve_dtype("bf16", CPU) is torch.bfloat16


def test_auto_dtype_is_bf16_exactly_where_the_cpu_computes_it_natively(monkeypatch) -> None:
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(environment, "has_native_bf16", lambda device, n=native: n)
        assert resolve_dtype("auto", CPU) is expected


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^environment\.dtype: 'fp16' is not supported on CPU"):
        resolve_dtype("fp16", CPU)


def test_unknown_dtype_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_dtype("float16", CPU)
    assert str(error.value) == "environment.dtype: 'float16' is not one of fp32, bf16, fp16, auto"


def test_seed_everything_makes_draws_repeatable() -> None:
    seed_everything(1234)
    first = draws()
    seed_everything(1234)
    assert draws() == first
    seed_everything(1235)
    assert draws() != first


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_bad_seeds_are_config_errors(seed: object) -> None:
    with pytest.raises(ConfigError, match=r"^environment\.seed: "):
        seed_everything(seed)  # type: ignore[arg-type]


def test_rng_state_round_trip_through_weights_only_load(tmp_path) -> None:
    seed_everything(7)
    draws()
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's
    state = rng_state()
    expected = (draws(), random.gauss(0, 1), float(np.random.standard_normal()))

    torch.save(state, tmp_path / "rng.pt")
    restored = torch.load(tmp_path / "rng.pt", weights_only=True)
    seed_everything(99)  # scramble everything before restoring
    draws()
    set_rng_state(restored)
    assert (draws(), random.gauss(0, 1), float(np.random.standard_normal())) == expected


def test_rng_state_holds_only_plain_values() -> None:
    state = rng_state()
    assert isinstance(state["python"]["state"], list)
    assert isinstance(state["numpy"]["keys"], list)
    assert isinstance(state["torch_cpu"], torch.Tensor)
