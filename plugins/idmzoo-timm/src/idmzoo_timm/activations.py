"""``timm_act_resblock``: idmzoo's residual block with a timm activation in place of SiLU.

idmzoo has no activation block kind: the built-in residual block applies SiLU itself.
Rather than change the core, this block *is* that residual block (same parameters, same
state-dict keys, the same checkpoint loads into it) with each of its SiLU modules replaced
by ``timm.layers.create_act_layer(act)``.  The timestep MLP and the encoder's pool heads
keep their SiLU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn as nn
from pydantic import Field
from timm.layers import create_act, create_act_layer

from idmzoo import BlockBuildError, BlockContext, ResBlock, ResBlockParams

__all__ = ["TIMM_ACTIVATIONS", "TimmActResBlockParams", "TimmActResBlock"]

#: Every name ``timm.layers.get_act_layer`` accepts (timm keeps them in ``create_act._ACT_LAYER_DEFAULT``).
TIMM_ACTIVATIONS: tuple[str, ...] = tuple(sorted(create_act._ACT_LAYER_DEFAULT))


class TimmActResBlockParams(ResBlockParams):
    """Parameters of :class:`TimmActResBlock`: those of ``resblock`` plus the activation."""

    act: Literal[TIMM_ACTIVATIONS] = Field(  # type: ignore[valid-type]
        "silu", description="The timm activation (timm.layers.get_act_layer name) used instead of SiLU."
    )


class TimmActResBlock(ResBlock):
    """idmzoo's :class:`~idmzoo.blocks.resblock.ResBlock` with timm activation ``act``.

    Args:
        channels: input channels.
        out_channels: output channels.
        ctx: the builder's context.
        act: a name of :data:`TIMM_ACTIVATIONS`.
        **resblock: the other ``ResBlock`` arguments (``resample``, ``use_scale_shift_norm``, ...).

    Raises:
        BlockBuildError: the core residual block no longer uses SiLU modules to replace.
    """

    def __init__(
        self, channels: int, out_channels: int, ctx: BlockContext, *, act: str, **resblock: Any
    ) -> None:
        super().__init__(channels, out_channels, ctx, **resblock)
        sites = [
            (parent, child_name)
            for parent in self.modules()
            for child_name, child in parent.named_children()
            if type(child) is nn.SiLU
        ]
        if not sites:
            raise BlockBuildError(
                "timm_act_resblock found no SiLU module in idmzoo's ResBlock to replace; "
                "this idmzoo-timm does not match the installed idmzoo"
            )
        for parent, child_name in sites:
            setattr(parent, child_name, create_act_layer(act))
