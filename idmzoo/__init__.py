"""idmzoo: the improved-diffusion / guided-diffusion U-Net as a config-driven zoo of registered blocks."""

from .builder import build
from .checkpoint import load_checkpoint
from .diffusers_interop import from_diffusers, to_diffusers
from .errors import (
    CheckpointError,
    DiffusersConversionError,
    DuplicateBlockError,
    IdmzooError,
    IdmzooPluginWarning,
    InvalidBlockError,
    PluginLoadError,
    UnknownBlockError,
)
from .reference import spec_from_flags, spec_from_reference
from .registry import (
    BLOCK_KINDS,
    BlockInfo,
    BlockParams,
    SiteCheckError,
    get_block,
    list_blocks,
    register_block,
)
from .runtime import attention_backend, get_attention_backend, set_attention_backend
from .schema import spec_schema
from .spec import FamilyParams, Spec, load_spec
from .summary import ModelSummary, summarize
from .zoo import create, list_models, zoo_spec

__version__ = "0.1.0"

__all__ = [
    "BLOCK_KINDS",
    "BlockInfo",
    "BlockParams",
    "CheckpointError",
    "DiffusersConversionError",
    "DuplicateBlockError",
    "FamilyParams",
    "IdmzooError",
    "IdmzooPluginWarning",
    "InvalidBlockError",
    "ModelSummary",
    "PluginLoadError",
    "SiteCheckError",
    "Spec",
    "UnknownBlockError",
    "attention_backend",
    "build",
    "create",
    "get_attention_backend",
    "get_block",
    "list_blocks",
    "from_diffusers",
    "list_models",
    "load_checkpoint",
    "load_spec",
    "register_block",
    "set_attention_backend",
    "spec_from_flags",
    "spec_from_reference",
    "spec_schema",
    "summarize",
    "to_diffusers",
    "zoo_spec",
]
