"""Dimension-generic layer constructors shared by the built-in blocks and by plugins."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..runtime import dropout_keep_mask

__all__ = ["layer_nd", "conv_nd", "avg_pool_nd", "zero_module", "resample_factor", "ThresholdDropout"]


def layer_nd(name: str, dims: int) -> type[nn.Module]:
    """The 1-D, 2-D or 3-D torch layer class ``name`` (``"Conv"`` → ``nn.Conv2d`` for dims 2).

    Works for every torch layer spelt ``<name><dims>d``: ``Conv``, ``ConvTranspose``,
    ``AvgPool``, ``AdaptiveAvgPool``, ``BatchNorm``, ...
    """
    return getattr(nn, f"{name}{dims}d")


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    return layer_nd("Conv", dims)(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling."""
    return layer_nd("AvgPool", dims)(*args, **kwargs)


def resample_factor(dims: int) -> int | tuple[int, int, int]:
    """×2 along every axis, except the first (depth/time) axis of 3-D signals: (1, 2, 2)."""
    return (1, 2, 2) if dims == 3 else 2


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters, so a residual branch starts as the identity."""
    for parameter in module.parameters():
        parameter.detach().zero_()
    return module


class ThresholdDropout(nn.Dropout):
    """``nn.Dropout`` whose mask is a uniform draw compared with ``p``: the same inverted
    dropout (keep each element with probability 1 - p, scale by 1 / (1 - p)).

    On CPU, ``torch.rand_like`` and a comparison cost less than half of the ``bernoulli_``
    ``nn.Dropout`` draws, and the mask autograd keeps is boolean, 1 byte per element
    instead of 4.  Checkpointing replays the same mask, as it restores the RNG state;
    selective checkpointing keeps the mask instead (:func:`~idmzoo.runtime.dropout_keep_mask`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or self.inplace:
            return super().forward(x)
        return x * dropout_keep_mask(x, self.p) * (1.0 / (1.0 - self.p))
