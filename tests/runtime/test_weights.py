"""`is_dense`: which weights the hand-written autograd Functions may take."""

from __future__ import annotations

import torch
from torch import nn

from tunegen.runtime.lora import LoRALinear
from tunegen.runtime.models.llama import MLP
from tunegen.runtime.quantization import quantize_base_weights
from tunegen.runtime.weights import is_dense


def test_plain_tensors_and_parameters_are_dense() -> None:
    assert is_dense(torch.zeros(2, 2))
    assert is_dense(nn.Parameter(torch.zeros(2, 2)))
    assert is_dense(nn.Parameter(torch.zeros(2, 2), requires_grad=False))


def test_an_nf4_weight_is_not_dense_so_both_functions_keep_the_module_path() -> None:
    """A QLoRA model's base weights are NF4: the MLP and LoRA must not take their fast paths."""
    mlp = MLP(128, 256)
    mlp.down_proj = LoRALinear.from_linear(mlp.down_proj, rank=4, alpha=8.0)
    quantize_base_weights(mlp)
    assert not is_dense(mlp.down_proj.weight)
    assert not mlp.down_proj._plain_lora()
    x = torch.randn(2, 3, 128)
    reference = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), reference)


def test_a_tensor_subclass_is_not_dense() -> None:
    class Tagged(torch.Tensor):
        pass

    assert not is_dense(torch.zeros(2, 2).as_subclass(Tagged))
