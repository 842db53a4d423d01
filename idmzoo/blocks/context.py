"""What the builder tells a block about the place it is built in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch.nn as nn

__all__ = ["BlockContext", "Stage"]

#: Where in the model a block sits: the encoder path, the bottleneck, the decoder path,
#: or the output head.
Stage = Literal["input", "middle", "output", "head"]


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
    """

    dims: int
    emb_channels: int
    dropout: float
    stage: Stage
    make_norm: Callable[[int], nn.Module]
    make_resblock: Callable[..., nn.Module]

    def at(self, stage: Stage) -> BlockContext:
        """The same context for another stage."""
        return replace(self, stage=stage)
