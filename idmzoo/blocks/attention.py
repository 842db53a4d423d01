"""Self-attention over all spatial positions, in the two QKV layouts of the reference checkpoints."""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from ..registry import BlockParams, SiteCheckError
from ..runtime import dot_product_attention
from .context import BlockContext
from .layers import conv_nd, zero_module

__all__ = [
    "AttentionParams",
    "AttentionBlock",
    "LegacyOrderAttention",
    "SplitOrderAttention",
    "split_qkv_first",
    "attend",
]


def split_qkv_first(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, 3*C, T]`` laid out as (q|k|v, head, channel) → q, k, v each ``[B, H, C/H, T]``."""
    b, _, t = qkv.shape
    q, k, v = qkv.reshape(b, 3, num_heads, -1, t).unbind(1)
    return q, k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``[B, H, C/H, T]`` q, k, v, merged back to ``[B, C, T]``."""
    h = dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return h.transpose(-1, -2).reshape(q.shape[0], -1, q.shape[-1])  # [B, H, T, C/H] → [B, C, T]


class AttentionParams(BlockParams):
    """Parameters of the attention blocks: how many heads, or how wide each head is."""

    num_heads: PositiveInt = Field(1, description="Number of heads (ignored when num_head_channels is set).")
    num_head_channels: PositiveInt | None = Field(
        None, description="Channels per head; the head count then follows from the channel count."
    )
    num_heads_upsample: PositiveInt | None = Field(
        None, description="Number of heads on the decoder path; None means num_heads."
    )

    def heads(self, channels: int, stage: str) -> int:
        """The head count at a place with ``channels`` channels in ``stage``."""
        if self.num_head_channels is not None:
            return channels // self.num_head_channels
        if stage == "output" and self.num_heads_upsample is not None:
            return self.num_heads_upsample
        return self.num_heads

    def check(self, channels: int, stage: str) -> None:
        if self.num_head_channels is not None:
            if channels % self.num_head_channels:
                raise SiteCheckError(
                    "num_head_channels",
                    f"num_head_channels={self.num_head_channels} does not divide {channels} channels",
                )
            return
        field = "num_heads_upsample" if stage == "output" and self.num_heads_upsample else "num_heads"
        heads = self.heads(channels, stage)
        if channels % heads:
            raise SiteCheckError(field, f"{field}={heads} does not divide {channels} channels")


class AttentionBlock(nn.Module):
    """norm → 1x1 conv to q, k, v → multi-head attention → zero-initialised 1x1 conv, residual.

    Subclasses fix how the ``3 * channels`` qkv projection is split into heads; that is
    the only difference between the improved-diffusion and the newer guided-diffusion
    checkpoints.  The kernel is chosen at run time (:func:`idmzoo.attention_backend`).
    """

    def __init__(
        self,
        channels: int,
        ctx: BlockContext,
        *,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        num_heads_upsample: int | None = None,
    ) -> None:
        super().__init__()
        params = AttentionParams(
            type="attention",
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_heads_upsample=num_heads_upsample,
        )
        params.check(channels, ctx.stage)
        self.num_heads = params.heads(channels, ctx.stage)
        self.norm = ctx.make_norm(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3*C, T]`` → q, k, v, each ``[B, heads, C/heads, T]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.norm(x).reshape(b, c, -1)  # [B, C, T]
        h = self.proj_out(attend(*self.split_heads(self.qkv(h))))
        return x + h.reshape(b, c, *spatial)  # the residual keeps x's memory format


class LegacyOrderAttention(AttentionBlock):
    """improved-diffusion's layout: the qkv channels are grouped by head first, then q/k/v."""

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, t = qkv.shape
        q, k, v = qkv.reshape(b, self.num_heads, 3, -1, t).unbind(2)
        return q, k, v


class SplitOrderAttention(AttentionBlock):
    """guided-diffusion's ``use_new_attention_order``: split q/k/v first, then heads."""

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return split_qkv_first(qkv, self.num_heads)
