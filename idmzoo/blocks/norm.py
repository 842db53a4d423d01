"""Normalization blocks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt

from ..registry import BlockParams, Place, check_divides, register_block

__all__ = ["GroupNormParams", "GroupNorm32"]


class GroupNormParams(BlockParams):
    """Parameters of :class:`GroupNorm32`."""

    num_groups: PositiveInt = Field(
        32, description="Number of channel groups; must divide every channel count."
    )
    eps: PositiveFloat = Field(
        1e-5, le=1.0, description="Added to the variance for numerical stability; at most 1."
    )

    def check(self, place: Place) -> None:
        check_divides(
            "num_groups",
            self.num_groups,
            place.channels,
            hint="; choose a divisor of every channel count in the model (e.g. 1, or a power of two "
            "dividing model_channels)",
        )


@register_block(
    "norm",
    "group_norm32",
    params=GroupNormParams,
    description="GroupNorm computed in float32, output cast back to the input dtype.",
)
class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are always computed in float32, output in the input dtype.

    In float16/bfloat16 the mean and variance over a group lose precision and can
    overflow (NaNs with small batches or few channels), so low-precision inputs, such as
    autocast's convolutions produce, are normalized in float32 and cast back.  Float32
    inputs take the plain path, with no copy: autocast keeps ``group_norm`` of a float32
    tensor in float32 (CPU passes it through, CUDA lists it as a float32 op).
    """

    def __init__(self, num_channels: int, *, num_groups: int, eps: float) -> None:
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
