"""What the builder tells a block factory about the place it is built in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch.nn as nn

from ..registry.params import Stage

__all__ = ["BlockContext", "Stage"]


@dataclass(frozen=True)
class BlockContext:
    """Model-wide facts a block factory needs besides its own parameters.

    Attributes:
        dims: 1, 2 or 3 spatial dimensions.
        emb_channels: width of the timestep (and class) embedding.
        dropout: dropout rate of the residual blocks.
        stage: where the block sits (attention uses it for ``num_heads_upsample``).
        make_norm: builds the spec's norm block for a channel count.
        make_resblock: builds the spec's residual block as
            ``make_resblock(channels, out_channels, resample=None | "up" | "down")``.
        make_activation: builds the spec's activation, ``make_activation()``.

    ``make_norm``, ``make_resblock`` and ``make_activation`` build the blocks chosen for the
    place the factory is building at (the spec's ``overrides`` may choose them by place).
        out_channels: for the encoder's ``pool`` head: the model's output width.
        feature_channels: for the ``pool`` head: the summed channels of every encoder
            block and the bottleneck (what the spatial heads pool).
        spatial_size: for the ``pool`` head: the bottleneck's side length (0 when the
            spec sets no ``image_size``).
    """

    dims: int
    emb_channels: int
    dropout: float
    stage: Stage
    make_norm: Callable[[int], nn.Module]
    make_resblock: Callable[..., nn.Module]
    make_activation: Callable[[], nn.Module] = nn.SiLU
    out_channels: int = 0
    feature_channels: int = 0
    spatial_size: int = 0

    def at(self, stage: Stage, **facts: int) -> BlockContext:
        """The same context for another stage (and, for the head, its output facts)."""
        return replace(self, stage=stage, **facts)
