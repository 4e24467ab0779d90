"""What kind of tensor a weight is, for the hand-written autograd Functions that only hold for one.

The runtime's fused Functions (the MLP's `_SwiGLUDownFunction`, LoRA's `_LoRAFunction`) compute
their gradients with plain matmuls on the weight. That is exact for an ordinary dense tensor and
wrong, or slow, for a tensor subclass: an NF4 weight (`quantization.is_quantized`), or a DTensor
outside FSDP's unshard. So the test is strict on purpose: anything but a plain `Tensor` or
`nn.Parameter` keeps the module path, where the subclass's own ops run.
"""

from __future__ import annotations

from torch import Tensor, nn


def is_dense(weight: object) -> bool:
    """Whether `weight` is a plain dense tensor or parameter (no tensor subclass)."""
    return type(weight) in (nn.Parameter, Tensor)
