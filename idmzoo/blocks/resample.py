"""Up- and downsampling blocks: ×2 in every axis, except only H and W for 3-D signals."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_block
from ..runtime import prefer_recompute
from .context import BlockContext
from .layers import avg_pool_nd, conv_nd, resample_factor

__all__ = [
    "Upsample",
    "Downsample",
    "nearest_upsample",
    "nearest_conv_upsample",
    "avg_pool_downsample",
    "strided_conv_downsample",
    "resblock_upsample",
    "resblock_downsample",
]


class Upsample(nn.Module):
    """Nearest-neighbour ×2, optionally followed by a 3x3 conv (parameters under ``conv``)."""

    def __init__(self, channels: int, dims: int, *, use_conv: bool = False) -> None:
        super().__init__()
        self.scale_factor = resample_factor(dims)
        self.conv = conv_nd(dims, channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        if self.conv is None:
            return x
        with prefer_recompute():  # the output leaves the block: nothing here reads it again
            return self.conv(x)


class Downsample(nn.Module):
    """A stride-2 3x3 conv, or a 2x average pool (the module is ``op`` either way)."""

    def __init__(self, channels: int, dims: int, *, use_conv: bool = False) -> None:
        super().__init__()
        stride = resample_factor(dims)
        if use_conv:
            self.op = conv_nd(dims, channels, channels, 3, stride=stride, padding=1)
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with prefer_recompute():  # the output leaves the block: nothing here reads it again
            return self.op(x)


@register_block("upsample", "nearest", description="Nearest-neighbour x2, no parameters.")
def nearest_upsample(channels: int, ctx: BlockContext) -> nn.Module:
    """Nearest-neighbour ×2 with no parameters (the reference's ``conv_resample=False``)."""
    return Upsample(channels, ctx.dims)


@register_block("upsample", "nearest_conv", description="Nearest-neighbour x2, then a 3x3 conv.")
def nearest_conv_upsample(channels: int, ctx: BlockContext) -> nn.Module:
    """Nearest-neighbour ×2 then a 3x3 conv (the reference's default)."""
    return Upsample(channels, ctx.dims, use_conv=True)


@register_block("downsample", "avg_pool", description="2x average pooling, no parameters.")
def avg_pool_downsample(channels: int, ctx: BlockContext) -> nn.Module:
    """2x average pooling with no parameters (the reference's ``conv_resample=False``)."""
    return Downsample(channels, ctx.dims)


@register_block("downsample", "strided_conv", description="A 3x3 conv with stride 2.")
def strided_conv_downsample(channels: int, ctx: BlockContext) -> nn.Module:
    """A 3x3 conv with stride 2 (the reference's default)."""
    return Downsample(channels, ctx.dims, use_conv=True)


@register_block("upsample", "resblock_up", description="The spec's residual block, upsampling inside it.")
def resblock_upsample(channels: int, ctx: BlockContext) -> nn.Module:
    """The spec's residual block, upsampling inside (guided-diffusion's ``resblock_updown``)."""
    return ctx.make_resblock(channels, channels, resample="up")


@register_block(
    "downsample", "resblock_down", description="The spec's residual block, downsampling inside it."
)
def resblock_downsample(channels: int, ctx: BlockContext) -> nn.Module:
    """The spec's residual block, downsampling inside (guided-diffusion's ``resblock_updown``)."""
    return ctx.make_resblock(channels, channels, resample="down")
