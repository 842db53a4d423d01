"""Every exception and warning idmzoo raises on purpose, so callers can tell them from torch's.

All errors derive from :class:`IdmzooError`; most also derive from the builtin a caller
would naturally catch (``KeyError`` for an unknown name, ``ValueError`` for a bad value),
so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "IdmzooError",
    "UnknownBlockError",
    "DuplicateBlockError",
    "InvalidBlockError",
    "BlockBuildError",
    "SiteCheckError",
    "PluginLoadError",
    "CheckpointError",
    "InputError",
    "UnknownModelError",
    "FlagError",
    "ReferenceConversionError",
    "DownloadError",
    "ManualDownloadError",
    "DiffusersConversionError",
    "SpecVersionError",
    "ArtifactError",
    "RequirementError",
    "IdmzooPluginWarning",
    "IdmzooDeprecationWarning",
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
    """A registration whose kind, name, factory or parameter model is not usable."""


class BlockBuildError(IdmzooError, RuntimeError):
    """A registered block that failed to build, returned no module, or returns the wrong shape."""


class SiteCheckError(IdmzooError, ValueError):
    """Raised by a block's validation hook when it cannot work at some place in the model.

    Args:
        field: the block's parameter at fault (reported at the JSON path
            ``<kind>.<field>``), or ``None`` for the block as a whole.
        message: what is wrong and what would be valid.
        spec_field: report the error at this top-level spec field instead (e.g.
            ``"image_size"``), when the block is fine but the model around it is not.
    """

    def __init__(self, field: str | None, message: str, *, spec_field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.spec_field = spec_field


class PluginLoadError(IdmzooError):
    """Plugins that failed to load (raised only in strict plugin mode, at every lookup until fixed)."""


class CheckpointError(IdmzooError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class InputError(IdmzooError, ValueError):
    """A forward input (``x``, ``timesteps``, ``y``, ``low_res``) the model cannot take; the message names it."""


class UnknownModelError(IdmzooError, LookupError):
    """A model name that is not in the zoo, or a checkpoint name that is not one of its entry's."""


class FlagError(IdmzooError, ValueError):
    """A reference command line that the reference scripts would reject (or could not build)."""


class ReferenceConversionError(IdmzooError, ValueError):
    """Reference constructor arguments that do not describe a model the reference could build."""


class DownloadError(IdmzooError):
    """A file that could not be downloaded, or whose bytes are not the ones recorded for it."""


class ManualDownloadError(DownloadError):
    """A published checkpoint with no direct download link (e.g. on Google Drive), not in the cache yet."""


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


class SpecVersionError(IdmzooError):
    """A saved spec whose ``spec_version`` this idmzoo cannot read (newer than it knows, or not a version).

    Not a ``ValueError``, so pydantic lets it through a validator unchanged: it is about
    the idmzoo installed, not about a field of the spec.
    """


class ArtifactError(IdmzooError, ValueError):
    """A ``.safetensors`` file or pretrained folder that is not a readable idmzoo model."""


class RequirementError(ArtifactError):
    """A saved model needs a distribution that is missing, or installed in a version that may differ."""


class IdmzooPluginWarning(UserWarning):
    """A plugin was skipped, replaced another distribution's block, or loaded slowly."""


class IdmzooDeprecationWarning(FutureWarning):
    """A deprecated name that still works (a renamed block's old name); the message gives the new one.

    A ``FutureWarning``, so it is shown by default: spec files are written by users, not code.
    """
