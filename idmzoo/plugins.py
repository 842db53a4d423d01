"""Discovery of block plugins through the ``idmzoo.blocks`` entry-point group.

A distribution advertises its blocks in its ``pyproject.toml``::

    [project.entry-points."idmzoo.blocks"]
    my_blocks = "my_package.blocks:register"

The entry point names either a function, called with no arguments, that calls
:func:`idmzoo.register_block`, or a module whose import registers blocks with the
decorator.  Plugins are loaded once, the first time the registry is used, idmzoo's own
built-ins first and then every other distribution in name order.

A plugin that raises (at import, while registering, or by registering an invalid block
or a name another distribution already holds) is skipped with an
:class:`~idmzoo.errors.IdmzooPluginWarning` naming its distribution and the cause, and
every block it had registered so far is removed again, so the rest of the registry keeps
working.  Set ``IDMZOO_STRICT_PLUGINS=1`` to raise :class:`~idmzoo.errors.PluginLoadError`
instead (for CI, where a silently missing block should fail loudly).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import warnings
from typing import TYPE_CHECKING

from .errors import IdmzooPluginWarning, InvalidBlockError, PluginLoadError

if TYPE_CHECKING:
    from .registry import BlockRegistry

__all__ = ["ENTRY_POINT_GROUP", "STRICT_ENV_VAR", "load_entry_point_plugins", "strict_plugins"]

ENTRY_POINT_GROUP = "idmzoo.blocks"
STRICT_ENV_VAR = "IDMZOO_STRICT_PLUGINS"
_BUILTIN_DISTRIBUTION = "idmzoo"


def strict_plugins() -> bool:
    """Whether ``IDMZOO_STRICT_PLUGINS`` asks for a failing plugin to raise instead of warn."""
    return os.environ.get(STRICT_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else entry_point.value.split(":")[0].split(".")[0]


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line, so every skipped plugin is one line of stderr."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def _run_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    """Import the entry point's target; call it when it is a registration function."""
    target = entry_point.load()
    if inspect.ismodule(target):
        return  # importing the module ran its @register_block decorators
    if inspect.isclass(target) or not callable(target):
        raise InvalidBlockError(
            f"entry point {entry_point.name} = {entry_point.value} must name a module or a "
            f"registration function, but it names {type(target).__name__} {target!r}"
        )
    target()


def load_entry_point_plugins(registry: BlockRegistry) -> None:
    """Load every ``idmzoo.blocks`` entry point into ``registry``, idmzoo's own first.

    Loading idmzoo's built-ins first means a plugin that reuses a built-in name is the
    one reported, never the built-in.  Each plugin runs inside
    :meth:`BlockRegistry.loading <idmzoo.registry.BlockRegistry.loading>`, which
    attributes its blocks to its distribution and removes them all if it fails.

    Args:
        registry: where the plugins' :func:`~idmzoo.register_block` calls land.

    Raises:
        PluginLoadError: a plugin failed and ``IDMZOO_STRICT_PLUGINS`` is set.
    """
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (
            _distribution_name(ep) != _BUILTIN_DISTRIBUTION,
            _distribution_name(ep),
            ep.name,
        ),
    )
    for entry_point in entry_points:
        dist = _distribution_name(entry_point)
        try:
            with registry.loading(dist):
                _run_entry_point(entry_point)
        except Exception as err:  # a plugin may fail in any way; it must not break the rest
            cause = _one_line(err)
            registry.failed_plugins.append((dist, cause))
            message = (
                f"idmzoo skipped plugin {dist!r} (entry point {entry_point.name} = "
                f"{entry_point.value}): {cause}"
            )
            if strict_plugins():
                raise PluginLoadError(message) from err
            warnings.warn(message, IdmzooPluginWarning, stacklevel=2)
