"""The exceptions idmzoo raises, so callers can catch idmzoo's failures apart from torch's."""

from __future__ import annotations

__all__ = [
    "IdmzooError",
    "UnknownBlockError",
    "DuplicateBlockError",
    "InvalidBlockError",
    "PluginLoadError",
    "CheckpointError",
    "DiffusersConversionError",
    "IdmzooPluginWarning",
]


class IdmzooError(Exception):
    """Base class of every error idmzoo raises on purpose."""


class UnknownBlockError(IdmzooError, KeyError):
    """A block name that no installed distribution registered.

    Subclasses ``KeyError`` so ``except KeyError`` around a lookup keeps working, but its
    ``str`` is the plain message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateBlockError(IdmzooError, ValueError):
    """Two registrations of the same kind and name, without ``override=True``."""


class InvalidBlockError(IdmzooError, TypeError):
    """A registration whose factory or parameter model is not usable."""


class PluginLoadError(IdmzooError):
    """A plugin that failed to load (raised only in strict plugin mode)."""


class CheckpointError(IdmzooError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class DiffusersConversionError(IdmzooError, ValueError):
    """A model that diffusers' ``UNet2DModel`` cannot express, or a ``UNet2DModel`` idmzoo cannot.

    Raised by :func:`idmzoo.to_diffusers` (``field`` is the spec field, e.g.
    ``"attention.num_heads"``) and :func:`idmzoo.from_diffusers` (``field`` is the
    ``UNet2DModel`` config field, e.g. ``"down_block_types"``).  Nothing is converted
    approximately: either the converted model computes the same function, or this is raised.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class IdmzooPluginWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register its blocks."""
