"""Discovery of block plugins through the ``idmzoo.blocks`` entry-point group.

A distribution advertises its blocks in its ``pyproject.toml``::

    [project.entry-points."idmzoo.blocks"]
    my_blocks = "my_package.blocks:register"

The entry point names either a function, called with no arguments, that calls
:func:`idmzoo.register_block`, or a module whose import registers blocks with the
decorator.  Plugins are loaded once, the first time the registry is used.  A plugin that
raises (at import or while registering) is skipped with an :class:`IdmzooPluginWarning`
naming its distribution and the cause, and every block it had registered so far is
removed again; set ``IDMZOO_STRICT_PLUGINS=1`` to make that an error instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from typing import TYPE_CHECKING

from .errors import IdmzooPluginWarning, PluginLoadError

if TYPE_CHECKING:
    from .registry import BlockRegistry

__all__ = ["ENTRY_POINT_GROUP", "STRICT_ENV_VAR", "load_entry_point_plugins"]

ENTRY_POINT_GROUP = "idmzoo.blocks"
STRICT_ENV_VAR = "IDMZOO_STRICT_PLUGINS"
_BUILTIN_DISTRIBUTION = "idmzoo"


def _strict() -> bool:
    return os.environ.get(STRICT_ENV_VAR, "").lower() in ("1", "true", "yes")


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else entry_point.value.split(":")[0]


def load_entry_point_plugins(registry: BlockRegistry) -> None:
    """Load every ``idmzoo.blocks`` entry point into ``registry``, idmzoo's own first.

    Loading idmzoo's built-ins first means a plugin that reuses a built-in name is the
    one reported, never the built-in.
    """
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (_distribution_name(ep) != _BUILTIN_DISTRIBUTION, _distribution_name(ep), ep.name),
    )
    for entry_point in entry_points:
        dist = _distribution_name(entry_point)
        try:
            with registry.loading(dist):
                loaded = entry_point.load()
                if callable(loaded):
                    loaded()
        except Exception as err:  # a plugin may fail in any way; it must not break the rest
            cause = f"{type(err).__name__}: {err}"
            registry.failed_plugins.append((dist, cause))
            message = (
                f"idmzoo skipped plugin {dist!r} (entry point {entry_point.name} = "
                f"{entry_point.value}): {cause}"
            )
            if _strict():
                raise PluginLoadError(message) from err
            warnings.warn(message, IdmzooPluginWarning, stacklevel=3)
