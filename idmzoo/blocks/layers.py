"""Dimension-generic layer constructors shared by the built-in blocks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["conv_nd", "avg_pool_nd", "zero_module", "resample_factor", "ThresholdDropout"]

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOLS: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    return _CONVS[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling."""
    return _AVG_POOLS[dims](*args, **kwargs)


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
    instead of 4.  Checkpointing replays the same mask, as it restores the RNG state.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or self.inplace:
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))
