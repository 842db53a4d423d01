"""The block registry, its parameter models and plugin discovery; see :mod:`.core`."""

from .core import BLOCK_KINDS, REGISTRY, BlockInfo, BlockRegistry, get_block, list_blocks, register_block
from .params import BlockParams, Place, Stage, check_divides

__all__ = [
    "BLOCK_KINDS",
    "REGISTRY",
    "BlockInfo",
    "BlockParams",
    "BlockRegistry",
    "Place",
    "Stage",
    "check_divides",
    "get_block",
    "list_blocks",
    "register_block",
]
