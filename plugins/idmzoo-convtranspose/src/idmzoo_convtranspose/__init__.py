"""A learned ×2 upsampler: one transposed convolution with kernel 4, stride 2, padding 1.

Kernel 4 with stride 2 makes every output position receive exactly two taps per axis,
so the kernel overlaps itself evenly and, unlike kernel 3 with stride 2, leaves no
checkerboard pattern built into the layer (Odena et al., "Deconvolution and
Checkerboard Artifacts", 2016).  Padding 1 then makes the output exactly twice the
input: ``(L - 1) * 2 - 2 * 1 + 4 = 2L``.  For 3-D signals only H and W are doubled
(kernel ``(1, 4, 4)``, stride ``(1, 2, 2)``, padding ``(0, 1, 1)``), as every idmzoo
resampler keeps the depth/time axis.

With ``init="bilinear"`` the layer starts as bilinear ×2 interpolation of each channel
(the weights of :func:`torch.nn.functional.interpolate` with ``align_corners=False``,
exact away from the border), so a model swapping ``nearest_conv`` for it starts from a
smooth upsampler and learns from there.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

import idmzoo

__all__ = ["ConvTransposeParams", "conv_transpose_upsample", "register"]

#: The 1-D weights of bilinear ×2 interpolation, laid out for kernel 4, stride 2, padding 1.
_BILINEAR_TAPS = (0.25, 0.75, 0.75, 0.25)


class ConvTransposeParams(idmzoo.BlockParams):
    """Parameters of the ``conv_transpose`` upsampler."""

    init: Literal["default", "bilinear"] = Field(
        "default",
        description="Initial weights: PyTorch's default random init, or bilinear x2 "
        "interpolation of each channel (bias zero).",
    )


def _geometry(dims: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Kernel, stride and padding: (4, 2, 1) on every resampled axis, (1, 1, 0) on 3-D depth."""
    resampled = (4, 2, 1)
    axes = [(1, 1, 0)] + [resampled] * 2 if dims == 3 else [resampled] * dims
    kernel, stride, padding = zip(*axes, strict=True)
    return kernel, stride, padding


def _bilinear_kernel(kernel: tuple[int, ...]) -> torch.Tensor:
    """The outer product of the 1-D bilinear taps over every axis of length 4 (1 elsewhere)."""
    weight = torch.ones(())
    for size in kernel:
        taps = torch.tensor(_BILINEAR_TAPS if size == 4 else (1.0,))
        weight = weight[..., None] * taps
    return weight


def conv_transpose_upsample(channels: int, ctx: idmzoo.BlockContext, *, init: str) -> nn.Module:
    """A transposed convolution doubling the resolution of ``channels`` channels.

    Args:
        channels: input and output channels.
        ctx: the builder's context; only ``ctx.dims`` is used.
        init: ``"default"`` or ``"bilinear"`` (see :class:`ConvTransposeParams`).

    Returns:
        An ``nn.ConvTranspose1d/2d/3d`` (its parameters are ``weight`` and ``bias``).
    """
    kernel, stride, padding = _geometry(ctx.dims)
    conv = idmzoo.layer_nd("ConvTranspose", ctx.dims)(
        channels, channels, kernel, stride=stride, padding=padding
    )
    if init == "bilinear":
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[range(channels), range(channels)] = _bilinear_kernel(kernel).to(conv.weight)
            conv.bias.zero_()
    return conv


def register() -> None:
    """The ``idmzoo.blocks`` entry point: register ``conv_transpose`` as an upsample block."""
    idmzoo.register_block(
        "upsample",
        "conv_transpose",
        conv_transpose_upsample,
        params=ConvTransposeParams,
        description="Transposed conv x2 (kernel 4, stride 2, padding 1; 3-D: H and W only).",
    )
