"""Registers the timm blocks; idmzoo calls :func:`register_timm_blocks` through the entry point."""

from __future__ import annotations

import idmzoo

from .activations import TimmActResBlock, TimmActResBlockParams
from .norms import timm_norm_block, timm_norm_names

__all__ = ["register_timm_blocks"]


def register_timm_blocks() -> None:
    """Register ``timm_<name>`` for every timm norm, and ``timm_act_resblock``."""
    for name in timm_norm_names():
        factory, params, description = timm_norm_block(name)
        idmzoo.register_block("norm", f"timm_{name}", factory, params=params, description=description)
    idmzoo.register_block(
        "resblock",
        "timm_act_resblock",
        TimmActResBlock,
        params=TimmActResBlockParams,
        description="idmzoo's residual block with a timm activation (act) in place of SiLU.",
    )
