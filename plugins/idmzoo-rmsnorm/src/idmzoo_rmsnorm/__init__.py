"""Channel-wise RMSNorm: each position's channel vector divided by its root mean square.

GroupNorm (the reference's norm) pools statistics over space as well as channels, so a
pixel's output depends on the whole image and on the batch's resolution.  RMSNorm over
the channels of each position (as in recent diffusion U-Nets and transformers) depends
on that position alone, has no mean to subtract, and costs one reduction.  With
``num_groups > 1`` each group of channels gets its own RMS (like per-head QK-norm).
The statistics are computed in float32 whatever the input dtype, since squares of
float16 activations overflow above 256.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field, PositiveFloat, PositiveInt

import idmzoo

__all__ = ["RMSNormParams", "ChannelRMSNorm", "register"]


class RMSNormParams(idmzoo.BlockParams):
    """Parameters of :class:`ChannelRMSNorm`."""

    num_groups: PositiveInt = Field(
        1, description="Channel groups normalized separately; must divide every channel count."
    )
    eps: PositiveFloat = Field(1e-6, description="Added to the mean square for numerical stability.")
    affine: bool = Field(True, description="Learn a per-channel gain (initialised to 1).")

    def check(self, place: idmzoo.Place) -> None:
        """Reject a channel count the groups do not divide, before anything is built."""
        idmzoo.check_divides(
            "num_groups",
            self.num_groups,
            place.channels,
            hint="; choose a divisor of every channel count (1 always works)",
        )


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel axis (dim 1) of ``[N, C, *spatial]``, per group of channels.

    Args:
        num_channels: C.
        num_groups: groups of ``C / num_groups`` channels, each with its own RMS.
        eps: added to the mean square.
        affine: learn a per-channel gain ``weight``.
    """

    def __init__(self, num_channels: int, *, num_groups: int, eps: float, affine: bool) -> None:
        super().__init__()
        idmzoo.check_divides("num_groups", num_groups, num_channels)
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        groups = x.float().reshape(n, self.num_groups, c // self.num_groups, *spatial)  # [N, G, C/G, ...]
        normed = groups * torch.rsqrt(groups.square().mean(dim=2, keepdim=True) + self.eps)
        out = normed.reshape(x.shape)
        if self.weight is not None:
            out = out * self.weight.float().reshape(c, *([1] * len(spatial)))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, eps={self.eps}, affine={self.weight is not None}"


def register() -> None:
    """The ``idmzoo.blocks`` entry point: register ``rms_norm`` as a norm block."""
    idmzoo.register_block(
        "norm",
        "rms_norm",
        ChannelRMSNorm,
        params=RMSNormParams,
        description="RMSNorm over the channels of each position (optionally per group), in float32.",
    )
