"""Output heads of the encoder U-Net (guided-diffusion's noisy-image classifier).

Every head is built as ``factory(channels, ctx, **params)``, with the model's output width
and what it pools in ``ctx`` (:class:`~idmzoo.BlockContext`), and called as
``head(h, features)``: ``h`` is the bottleneck activation (in the input's dtype) and
``features`` the output of every encoder block, for the heads that pool all of them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..errors import SiteCheckError
from ..registry import BlockParams, Place, check_divides, register_block
from .attention import self_attention
from .context import BlockContext
from .layers import conv_nd, layer_nd, zero_module

__all__ = [
    "AttentionPoolParams",
    "SpatialPoolParams",
    "SpatialV2PoolParams",
    "AttentionPool",
    "AdaptivePoolHead",
    "AttentionPoolHead",
    "SpatialPoolHead",
    "spatial_pool_head",
    "spatial_v2_pool_head",
]


def _spatial_means(features: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Each feature map averaged over its spatial axes, concatenated: ``[N, sum(C)]``."""
    return torch.cat([f.type(dtype).mean(dim=tuple(range(2, f.dim()))) for f in features], dim=-1)


@register_block(
    "pool", "adaptive", description="Norm, activation (SiLU), global average pool, zero-initialised 1x1 conv."
)
class AdaptivePoolHead(nn.Sequential):
    """norm → activation → global average pool → zero-initialised 1x1 conv → flatten."""

    def __init__(self, channels: int, ctx: BlockContext) -> None:
        super().__init__(
            ctx.make_norm(channels),
            ctx.make_activation(),
            layer_nd("AdaptiveAvgPool", ctx.dims)(1),
            zero_module(conv_nd(ctx.dims, channels, ctx.out_channels, 1)),
            nn.Flatten(),
        )

    def forward(self, h: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(h)


class AttentionPoolParams(BlockParams):
    """Parameters of the attention-pooling head."""

    num_head_channels: PositiveInt = Field(64, description="Channels per attention head.")

    def check(self, place: Place) -> None:
        check_divides("num_head_channels", self.num_head_channels, place.channels)
        if place.dims == 3:
            raise SiteCheckError(
                None,
                "the attention pool learns one position per bottleneck pixel, but a 3-D input keeps "
                "its depth, which the spec does not fix; use dims 1 or 2, or another pool",
            )
        rate = place.ds
        if place.image_size is None or place.image_size % rate:
            raise SiteCheckError(
                None,
                f"the attention pool learns one position per bottleneck pixel, so image_size must be "
                f"set to a multiple of {rate} (the bottleneck's downsampling rate), but got {place.image_size}",
                spec_field="image_size",
            )


class AttentionPool(nn.Module):
    """CLIP-style attention pooling: the mean token, with learned positions, attends to all tokens.

    Args:
        tokens: spatial positions of the input (its side length to the power ``dims``).
        channels: input channels.
        num_head_channels: channels per head.
        out_channels: output width.
    """

    def __init__(self, tokens: int, channels: int, num_head_channels: int, out_channels: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, tokens + 1) / channels**0.5)
        self.qkv_proj = conv_nd(1, channels, 3 * channels, 1)
        self.c_proj = conv_nd(1, channels, out_channels, 1)
        self.num_heads = channels // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)  # [B, C, T]
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # [B, C, T+1]
        x = x + self.positional_embedding[None].to(x.dtype)
        return self_attention(x, self.qkv_proj, self.c_proj, self.num_heads, "qkv_first")[:, :, 0]


@register_block(
    "pool",
    "attention",
    params=AttentionPoolParams,
    description="Norm, activation (SiLU), CLIP-style attention pooling with learned positions.",
)
class AttentionPoolHead(nn.Sequential):
    """norm → activation → :class:`AttentionPool`; needs the spec's ``image_size``."""

    def __init__(self, channels: int, ctx: BlockContext, *, num_head_channels: int) -> None:
        super().__init__(
            ctx.make_norm(channels),
            ctx.make_activation(),
            AttentionPool(ctx.spatial_size**ctx.dims, channels, num_head_channels, ctx.out_channels),
        )

    def forward(self, h: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(h)


class SpatialPoolParams(BlockParams):
    """Parameters of the heads that pool every encoder block."""

    hidden_channels: PositiveInt = Field(2048, le=2**20, description="Width of the hidden layer.")


class SpatialV2PoolParams(SpatialPoolParams):
    """Parameters of :class:`SpatialV2PoolHead`, whose hidden layer is normalized."""

    def inner_norm_channels(self, place: Place) -> tuple[int, ...]:
        return (self.hidden_channels,)


class SpatialPoolHead(nn.Sequential):
    """Spatial means of every encoder block and the bottleneck, concatenated, then its layers."""

    def forward(self, h: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(_spatial_means(features, h.dtype))


@register_block(
    "pool",
    "spatial",
    params=SpatialPoolParams,
    description="Spatial means of every encoder block, then an MLP with ReLU.",
)
def spatial_pool_head(channels: int, ctx: BlockContext, *, hidden_channels: int) -> SpatialPoolHead:
    """guided-diffusion's ``spatial`` head: linear → ReLU → linear."""
    return SpatialPoolHead(
        nn.Linear(ctx.feature_channels, hidden_channels),
        nn.ReLU(),
        nn.Linear(hidden_channels, ctx.out_channels),
    )


@register_block(
    "pool",
    "spatial_v2",
    params=SpatialV2PoolParams,
    description="Spatial means of every encoder block, then an MLP with norm and activation (SiLU).",
)
def spatial_v2_pool_head(channels: int, ctx: BlockContext, *, hidden_channels: int) -> SpatialPoolHead:
    """guided-diffusion's ``spatial_v2`` head: linear → norm → activation → linear."""
    return SpatialPoolHead(
        nn.Linear(ctx.feature_channels, hidden_channels),
        ctx.make_norm(hidden_channels),
        ctx.make_activation(),
        nn.Linear(hidden_channels, ctx.out_channels),
    )
