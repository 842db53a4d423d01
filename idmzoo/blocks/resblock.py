"""The residual block, conditioned on the timestep embedding."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ..registry import BlockParams, register_block
from ..runtime import prefer_recompute
from .context import BlockContext
from .layers import ThresholdDropout, conv_nd, zero_module
from .resample import Downsample, Upsample
from .timestep import TimestepBlock

__all__ = ["ResBlockParams", "ResBlock"]


class ResBlockParams(BlockParams):
    """Parameters of :class:`ResBlock`."""

    use_scale_shift_norm: bool = Field(
        False,
        description="FiLM conditioning: the embedding gives a scale and a shift applied after "
        "the second norm, instead of being added before it.",
    )
    skip_conv: bool = Field(
        False,
        description="When the channel count changes, a 3x3 conv on the skip path instead of a 1x1 "
        "(the reference's use_conv).",
    )


@register_block(
    "resblock",
    "resblock",
    params=ResBlockParams,
    description="Residual block with additive or scale-shift (FiLM) timestep conditioning.",
)
class ResBlock(TimestepBlock):
    """norm → act → conv, add (or FiLM-apply) the embedding, norm → act → dropout → conv.

    The last conv starts at zero, so every residual branch begins as the identity.  With
    ``resample`` the block also halves or doubles the resolution (guided-diffusion's
    ``resblock_updown``): both paths are resampled after the first activation.

    Args:
        channels: input channels.
        out_channels: output channels.
        ctx: dims, embedding width, dropout and the norm and activation to use (SiLU by default).
        resample: ``"up"``, ``"down"`` or ``None``.
        use_scale_shift_norm: see :class:`ResBlockParams`.
        skip_conv: see :class:`ResBlockParams`.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        ctx: BlockContext,
        *,
        use_scale_shift_norm: bool,
        skip_conv: bool,
        resample: Literal["up", "down"] | None = None,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        dims = ctx.dims
        self.in_layers = nn.Sequential(
            ctx.make_norm(channels),
            ctx.make_activation(),
            conv_nd(dims, channels, out_channels, 3, padding=1),
        )
        self.updown = resample is not None
        if resample == "up":
            self.h_upd, self.x_upd = Upsample(channels, dims), Upsample(channels, dims)
        elif resample == "down":
            self.h_upd, self.x_upd = Downsample(channels, dims), Downsample(channels, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            ctx.make_activation(),
            nn.Linear(ctx.emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            ctx.make_norm(out_channels),
            ctx.make_activation(),
            ThresholdDropout(p=ctx.dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            kernel = 3 if skip_conv else 1
            self.skip_connection = conv_nd(dims, channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))  # [N, C, 1, ...]
        norm, act, dropout, conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + emb_out)
        skip = self.skip_connection(x)  # kept: dropping it would mean recomputing it
        h = dropout(act(h))
        with prefer_recompute():  # the branch's output only enters the sum
            return skip + conv(h)
