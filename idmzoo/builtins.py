"""Registers idmzoo's own blocks; reached through the ``idmzoo.blocks`` entry point like any plugin."""

from __future__ import annotations

from .blocks import attention, norm, pool, resample
from .blocks.resblock import ResBlock, ResBlockParams
from .models import families
from .registry import BlockParams, register_block

__all__ = ["register_builtin_blocks"]


def register_builtin_blocks() -> None:
    """Register every built-in block under its documented name."""
    register_block("family", "unet", families.build_unet, params=families.UNetFamily,
                   description="Diffusion U-Net: model(x, timesteps, y=None).")
    register_block("family", "superres_unet", families.build_superres_unet, params=families.SuperResUNetFamily,
                   description="Super-resolution U-Net: model(x, timesteps, low_res, y=None).")
    register_block("family", "encoder_unet", families.build_encoder_unet, params=families.EncoderUNetFamily,
                   description="Encoder half with a pooling head (noisy-image classifier): model(x, timesteps).")
    register_block("norm", "group_norm32", norm.GroupNorm32, params=norm.GroupNormParams,
                   description="GroupNorm computed in float32, output cast back to the input dtype.")
    register_block("resblock", "resblock", ResBlock, params=ResBlockParams,
                   description="Residual block with additive or scale-shift (FiLM) timestep conditioning.")
    register_block("attention", "legacy_attention", attention.LegacyOrderAttention, params=attention.AttentionParams,
                   description="Multi-head QKV self-attention, improved-diffusion layout (heads, then q/k/v).")
    register_block("attention", "new_order_attention", attention.SplitOrderAttention, params=attention.AttentionParams,
                   description="Multi-head QKV self-attention, guided-diffusion's new order (q/k/v, then heads).")
    register_block("attention", "conv2d_attention", attention.Conv2dProjectionAttention, params=attention.AttentionParams,
                   description="Multi-head QKV self-attention, consistency-models layout (q/k/v, then heads; Conv2d).")
    register_block("upsample", "nearest_conv", resample.nearest_conv_upsample, params=BlockParams,
                   description="Nearest-neighbour x2, then a 3x3 conv.")
    register_block("upsample", "nearest", resample.nearest_upsample, params=BlockParams,
                   description="Nearest-neighbour x2, no parameters.")
    register_block("upsample", "resblock_up", resample.resblock_upsample, params=BlockParams,
                   description="The spec's residual block, upsampling inside it.")
    register_block("downsample", "strided_conv", resample.strided_conv_downsample, params=BlockParams,
                   description="A 3x3 conv with stride 2.")
    register_block("downsample", "avg_pool", resample.avg_pool_downsample, params=BlockParams,
                   description="2x average pooling, no parameters.")
    register_block("downsample", "resblock_down", resample.resblock_downsample, params=BlockParams,
                   description="The spec's residual block, downsampling inside it.")
    register_block("pool", "adaptive", pool.AdaptivePoolHead, params=BlockParams,
                   description="Norm, SiLU, global average pool, zero-initialised 1x1 conv.")
    register_block("pool", "attention", pool.AttentionPoolHead, params=pool.AttentionPoolParams,
                   description="Norm, SiLU, CLIP-style attention pooling with learned positions.")
    register_block("pool", "spatial", pool.spatial_pool_head, params=pool.SpatialPoolParams,
                   description="Spatial means of every encoder block, then an MLP with ReLU.")
    register_block("pool", "spatial_v2", pool.spatial_v2_pool_head, params=pool.SpatialV2PoolParams,
                   description="Spatial means of every encoder block, then an MLP with norm and SiLU.")
