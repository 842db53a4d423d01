"""idmzoo: the improved-diffusion / guided-diffusion U-Net as a config-driven zoo of registered blocks.

Everything public is importable from here; nothing else is part of the API (the
submodules are internal and may move).  The names load on first use (PEP 562), so
``import idmzoo`` and the command line's ``--help``, ``--version`` and ``list-models`` do
not import torch.

For plugin authors: :func:`register_block`, :class:`BlockParams` and :class:`Place` (the
validation hook's argument), :func:`check_divides`, :class:`BlockContext` (what a factory
is given), :class:`TimestepBlock`, :class:`UNetLayout`/:class:`Site`, and the layer
helpers :func:`conv_nd`, :func:`layer_nd`, :func:`zero_module`, and
:func:`prefer_recompute` for selective checkpointing.  See ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the internal module that defines it.
_EXPORTS: dict[str, str] = {
    # building and running
    "build": "idmzoo.builder",
    "Spec": "idmzoo.spec",
    "FamilyParams": "idmzoo.spec",
    "load_spec": "idmzoo.spec",
    "spec_schema": "idmzoo.schema",
    "summarize": "idmzoo.summary",
    "ModelSummary": "idmzoo.summary",
    "attention_backend": "idmzoo.runtime",
    "get_attention_backend": "idmzoo.runtime",
    "set_attention_backend": "idmzoo.runtime",
    "prefer_recompute": "idmzoo.runtime",
    # the zoo, checkpoints and the reference libraries
    "create": "idmzoo.zoo",
    "list_models": "idmzoo.zoo",
    "zoo_spec": "idmzoo.zoo",
    "ZooEntry": "idmzoo.zoo",
    "download_checkpoint": "idmzoo.zoo",
    "load_checkpoint": "idmzoo.checkpoint",
    "save": "idmzoo.artifacts",
    "load": "idmzoo.pretrained",
    "from_pretrained": "idmzoo.pretrained",
    "identify": "idmzoo.identification",
    "SPEC_VERSION": "idmzoo.migrations",
    "spec_from_flags": "idmzoo.reference",
    "spec_from_reference": "idmzoo.reference",
    "to_diffusers": "idmzoo.diffusers_interop",
    "from_diffusers": "idmzoo.diffusers_interop",
    # the registry and the plugin API
    "BLOCK_KINDS": "idmzoo.registry",
    "BlockInfo": "idmzoo.registry",
    "BlockParams": "idmzoo.registry",
    "Place": "idmzoo.registry",
    "Stage": "idmzoo.registry",
    "check_divides": "idmzoo.registry",
    "get_block": "idmzoo.registry",
    "list_blocks": "idmzoo.registry",
    "register_block": "idmzoo.registry",
    "BlockContext": "idmzoo.blocks.context",
    "TimestepBlock": "idmzoo.blocks.timestep",
    "TimestepEmbedSequential": "idmzoo.blocks.timestep",
    "ResBlock": "idmzoo.blocks.resblock",
    "ResBlockParams": "idmzoo.blocks.resblock",
    "conv_nd": "idmzoo.blocks.layers",
    "layer_nd": "idmzoo.blocks.layers",
    "zero_module": "idmzoo.blocks.layers",
    "UNetLayout": "idmzoo.layout",
    "Site": "idmzoo.layout",
    "IdmzooModel": "idmzoo.models.base",
    # errors and warnings
    "IdmzooError": "idmzoo.errors",
    "UnknownBlockError": "idmzoo.errors",
    "DuplicateBlockError": "idmzoo.errors",
    "InvalidBlockError": "idmzoo.errors",
    "BlockBuildError": "idmzoo.errors",
    "SiteCheckError": "idmzoo.errors",
    "PluginLoadError": "idmzoo.errors",
    "CheckpointError": "idmzoo.errors",
    "InputError": "idmzoo.errors",
    "UnknownModelError": "idmzoo.errors",
    "FlagError": "idmzoo.errors",
    "ReferenceConversionError": "idmzoo.errors",
    "DownloadError": "idmzoo.errors",
    "ManualDownloadError": "idmzoo.errors",
    "DiffusersConversionError": "idmzoo.errors",
    "SpecVersionError": "idmzoo.errors",
    "ArtifactError": "idmzoo.errors",
    "RequirementError": "idmzoo.errors",
    "IdmzooPluginWarning": "idmzoo.errors",
    "IdmzooDeprecationWarning": "idmzoo.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'idmzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from .artifacts import save
    from .blocks.context import BlockContext
    from .blocks.layers import conv_nd, layer_nd, zero_module
    from .blocks.resblock import ResBlock, ResBlockParams
    from .blocks.timestep import TimestepBlock, TimestepEmbedSequential
    from .builder import build
    from .checkpoint import load_checkpoint
    from .diffusers_interop import from_diffusers, to_diffusers
    from .errors import (
        ArtifactError,
        BlockBuildError,
        CheckpointError,
        DiffusersConversionError,
        DownloadError,
        DuplicateBlockError,
        FlagError,
        IdmzooDeprecationWarning,
        IdmzooError,
        IdmzooPluginWarning,
        InputError,
        InvalidBlockError,
        ManualDownloadError,
        PluginLoadError,
        ReferenceConversionError,
        RequirementError,
        SiteCheckError,
        SpecVersionError,
        UnknownBlockError,
        UnknownModelError,
    )
    from .identification import identify
    from .layout import Site, UNetLayout
    from .migrations import SPEC_VERSION
    from .models.base import IdmzooModel
    from .pretrained import from_pretrained, load
    from .reference import spec_from_flags, spec_from_reference
    from .registry import (
        BLOCK_KINDS,
        BlockInfo,
        BlockParams,
        Place,
        Stage,
        check_divides,
        get_block,
        list_blocks,
        register_block,
    )
    from .runtime import attention_backend, get_attention_backend, prefer_recompute, set_attention_backend
    from .schema import spec_schema
    from .spec import FamilyParams, Spec, load_spec
    from .summary import ModelSummary, summarize
    from .zoo import ZooEntry, create, download_checkpoint, list_models, zoo_spec
