"""The exceptions idmzoo raises, so callers can catch idmzoo's failures apart from torch's."""

from __future__ import annotations

__all__ = [
    "IdmzooError",
    "UnknownBlockError",
    "DuplicateBlockError",
    "InvalidBlockError",
    "PluginLoadError",
    "CheckpointError",
    "DownloadError",
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


class DownloadError(IdmzooError):
    """A file that could not be downloaded, or whose bytes are not the ones recorded for it."""


class IdmzooPluginWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register its blocks."""
