"""Self-attention over all spatial positions, in the QKV layouts of the reference checkpoints."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from ..registry import BlockParams, Place, check_divides, register_block
from ..runtime import dot_product_attention, get_attention_backend, prefer_recompute
from .context import BlockContext
from .layers import conv_nd, zero_module

__all__ = [
    "QKVOrder",
    "AttentionParams",
    "head_count",
    "AttentionBlock",
    "LegacyOrderAttention",
    "SplitOrderAttention",
    "Conv2dProjectionAttention",
    "self_attention",
]

#: How the ``3 * C`` channels of the qkv projection are grouped: ``"heads_first"``
#: (improved-diffusion: per head, then q|k|v) or ``"qkv_first"`` (guided-diffusion's
#: new order: q|k|v, then per head).
QKVOrder = Literal["heads_first", "qkv_first"]


def _split(qkv: torch.Tensor, heads: int, order: QKVOrder, axis: int) -> tuple[torch.Tensor, ...]:
    """q, k, v of a qkv projection whose ``3 * C`` channels lie along ``axis`` (1 or 2)."""
    groups = (heads, 3) if order == "heads_first" else (3, heads)
    shape = (*qkv.shape[:axis], *groups, -1, *qkv.shape[axis + 1 :])
    return qkv.reshape(shape).unbind(axis + (1 if order == "heads_first" else 0))


def _attention_over_channels(qkv: torch.Tensor, heads: int, order: QKVOrder) -> torch.Tensor:
    """``[B, 3C, T]`` → ``[B, C, T]`` as the reference computes it (its einsum layout)."""
    b, _, t = qkv.shape
    q, k, v = (z.transpose(-1, -2) for z in _split(qkv, heads, order, axis=1))  # [B, H, T, C/H]
    return dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, -1, t)


def _attention_over_tokens(qkv: torch.Tensor, heads: int, order: QKVOrder) -> torch.Tensor:
    """``[B, T, 3C]`` → ``[B, T, C]``: every head's channels are contiguous, as fused kernels want."""
    b, t, _ = qkv.shape
    q, k, v = (z.transpose(1, 2) for z in _split(qkv, heads, order, axis=2))  # [B, H, T, C/H]
    return dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)


def _pointwise(conv: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to token-major ``[B, T, C]`` input: the same weights and maths.

    Its ``[C', C, 1]`` (``Conv1d``) or ``[C', C, 1, 1]`` (``Conv2d``) weight is a ``Linear`` weight.
    """
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


def _pointwise_channels(conv: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to channel-major ``[B, C, T]`` input, as the ``Conv1d`` it equals."""
    return F.conv1d(h, conv.weight.flatten(1).unsqueeze(-1), conv.bias)


def self_attention(
    h: torch.Tensor, qkv: nn.Module, proj: nn.Module, heads: int, order: QKVOrder
) -> torch.Tensor:
    """``proj(attention(qkv(h)))`` of ``[B, C, T]`` features, with 1x1 convolution projections.

    ``qkv`` and ``proj`` are 1x1 ``Conv1d`` or ``Conv2d`` modules (the weights of both read
    as matrices).  The ``"math"`` backend follows the reference op for op (channel-major, for
    verification).  The default computes token-major: the projections become matmuls over
    ``[B, T, C]`` and each head's q, k, v are unit-stride views, so SDPA runs its fused
    kernel without copying them; a ``channels_last`` input is already token-major, so the
    only copy left is the merge of SDPA's per-head output.  The result is ``[B, C', T]``,
    possibly a transposed view.
    """
    if get_attention_backend() == "math":
        out = _attention_over_channels(_pointwise_channels(qkv, h), heads, order)
        with prefer_recompute():  # the output only enters the residual sum
            return _pointwise_channels(proj, out)
    tokens = h.transpose(1, 2)  # [B, T, C]
    out = _attention_over_tokens(_pointwise(qkv, tokens), heads, order)
    with prefer_recompute():  # the output only enters the residual sum
        return _pointwise(proj, out).transpose(1, 2)


def head_count(
    channels: int,
    stage: str,
    *,
    num_heads: int,
    num_head_channels: int | None,
    num_heads_upsample: int | None,
) -> int:
    """The head count of an attention block with ``channels`` channels in ``stage``."""
    if num_head_channels is not None:
        return channels // num_head_channels
    if stage == "output" and num_heads_upsample is not None:
        return num_heads_upsample
    return num_heads


class AttentionParams(BlockParams):
    """Parameters of the attention blocks: how many heads, or how wide each head is."""

    num_heads: PositiveInt = Field(1, description="Number of heads (ignored when num_head_channels is set).")
    num_head_channels: PositiveInt | None = Field(
        None, description="Channels per head; the head count then follows from the channel count."
    )
    num_heads_upsample: PositiveInt | None = Field(
        None, description="Number of heads on the decoder path; None means num_heads."
    )

    def check(self, place: Place) -> None:
        if self.num_head_channels is not None:
            check_divides("num_head_channels", self.num_head_channels, place.channels)
            return
        upsampling = place.stage == "output" and self.num_heads_upsample is not None
        field = "num_heads_upsample" if upsampling else "num_heads"
        check_divides(field, getattr(self, field), place.channels)


class AttentionBlock(nn.Module):
    """norm → 1x1 conv to q, k, v → multi-head attention → zero-initialised 1x1 conv, residual.

    Subclasses fix how the ``3 * channels`` qkv projection is split into heads
    (:data:`QKVOrder`), the only difference between the improved-diffusion and the newer
    guided-diffusion checkpoints, and whether the two projections are stored as ``Conv1d``
    or ``Conv2d`` (consistency-models).  The kernel is chosen at run time
    (:func:`idmzoo.attention_backend`).
    """

    #: Channel grouping of the qkv projection; subclasses choose.
    qkv_order: QKVOrder
    #: Dimensionality of the 1x1 ``qkv`` and ``proj_out`` convolutions (their weights'
    #: layout only: attention always runs over the flattened positions).
    projection_dims: int = 1

    def __init__(
        self,
        channels: int,
        ctx: BlockContext,
        *,
        num_heads: int,
        num_head_channels: int | None,
        num_heads_upsample: int | None,
    ) -> None:
        super().__init__()
        self.num_heads = head_count(
            channels,
            ctx.stage,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_heads_upsample=num_heads_upsample,
        )
        self.norm = ctx.make_norm(channels)
        self.qkv = conv_nd(self.projection_dims, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(self.projection_dims, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.norm(x).reshape(b, c, -1)  # [B, C, T]
        h = self_attention(h, self.qkv, self.proj_out, self.num_heads, self.qkv_order)
        return x + h.reshape(b, c, *spatial)  # the residual keeps x's memory format


@register_block(
    "attention",
    "legacy_attention",
    params=AttentionParams,
    description="Multi-head QKV self-attention, improved-diffusion layout (heads, then q/k/v).",
)
class LegacyOrderAttention(AttentionBlock):
    """improved-diffusion's layout: the qkv channels are grouped by head first, then q/k/v."""

    qkv_order: QKVOrder = "heads_first"


@register_block(
    "attention",
    "new_order_attention",
    params=AttentionParams,
    description="Multi-head QKV self-attention, guided-diffusion's new order (q/k/v, then heads).",
)
class SplitOrderAttention(AttentionBlock):
    """guided-diffusion's ``use_new_attention_order``: split q/k/v first, then heads."""

    qkv_order: QKVOrder = "qkv_first"


@register_block(
    "attention",
    "conv2d_attention",
    params=AttentionParams,
    description="Multi-head QKV self-attention, consistency-models layout (q/k/v, then heads; Conv2d).",
)
class Conv2dProjectionAttention(AttentionBlock):
    """consistency-models' layout: q/k/v first, then heads, with 1x1 ``Conv2d`` projections.

    The weights are ``qkv.weight [3C, C, 1, 1]`` and ``proj_out.weight [C, C, 1, 1]``
    whatever the model's ``dims`` (the reference builds them 2-D and so runs only with
    ``dims=2``).  The reference's flash-attention kernel computes this same softmax
    attention (head widths 16, 32 or 64 there; any width here).
    """

    qkv_order: QKVOrder = "qkv_first"
    projection_dims: int = 2
