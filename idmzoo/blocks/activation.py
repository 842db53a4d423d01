"""Activation blocks: the non-linearity of the residual blocks, the time MLP and the output heads.

An activation is built as ``factory(**params)`` and maps ``x`` to the same shape.  The
built-ins hold no parameters or buffers, so choosing one changes no state-dict key and
every reference checkpoint still loads into the model.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from ..registry import BlockParams, register_block

__all__ = ["GELUParams", "silu", "gelu"]


@register_block("activation", "silu", description="SiLU (swish), x * sigmoid(x): the reference's everywhere.")
def silu() -> nn.Module:
    """``nn.SiLU``, as improved- and guided-diffusion use it."""
    return nn.SiLU()


class GELUParams(BlockParams):
    """Parameters of the GELU activation."""

    approximate: Literal["none", "tanh"] = Field(
        "none", description='"tanh" for the tanh approximation, "none" for the exact erf form.'
    )


@register_block("activation", "gelu", params=GELUParams, description="GELU, exact or tanh-approximated.")
def gelu(*, approximate: str) -> nn.Module:
    """``nn.GELU``."""
    return nn.GELU(approximate=approximate)
