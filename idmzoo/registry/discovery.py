"""Finding the blocks to register: idmzoo's own modules, then other distributions' entry points.

A distribution advertises its blocks in its ``pyproject.toml``::

    [project.entry-points."idmzoo.blocks"]
    my_blocks = "my_package.blocks:register"

The entry point names either a function, called with no arguments, that calls
:func:`idmzoo.register_block`, or a module whose import registers blocks with the
decorator.  idmzoo's own blocks declare themselves the same way in their modules, which
are imported by name (:data:`BUILTIN_MODULES`), so a clone used from its folder, a
vendored copy or a frozen app has them without any installed metadata.

This module only finds and runs plugins and describes how they failed; the registry
(:mod:`idmzoo.registry.core`) decides what a failure means and keeps the state.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidBlockError
from ..messages import one_line

__all__ = [
    "BUILTIN_PACKAGE",
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV_VAR",
    "SLOW_PLUGIN_SECONDS",
    "PluginFailure",
    "PluginTiming",
    "strict_plugins",
    "plugin_entry_points",
    "run_plugin",
    "import_builtins",
]

ENTRY_POINT_GROUP = "idmzoo.blocks"
STRICT_ENV_VAR = "IDMZOO_STRICT_PLUGINS"
#: The distribution name idmzoo's own blocks are attributed to.
BUILTIN_PACKAGE = "idmzoo"
#: The modules whose import registers idmzoo's own blocks, in the order they load.
BUILTIN_MODULES: tuple[str, ...] = (
    "idmzoo.blocks.norm",
    "idmzoo.blocks.activation",
    "idmzoo.blocks.embedding",
    "idmzoo.blocks.resblock",
    "idmzoo.blocks.attention",
    "idmzoo.blocks.resample",
    "idmzoo.blocks.pool",
    "idmzoo.models.families",
)
#: A plugin that takes longer than this to load is reported, since it slows every command.
SLOW_PLUGIN_SECONDS = 2.0
_IDMZOO_ROOT = str(Path(__file__).resolve().parent.parent)


def strict_plugins() -> bool:
    """Whether ``IDMZOO_STRICT_PLUGINS`` asks for failing plugins to raise instead of warn."""
    return os.environ.get(STRICT_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded.

    Attributes:
        distribution: the distribution that declared the entry point.
        entry_point: ``name = value`` of the entry point.
        cause: ``Type: message`` on one line.
        filename: the plugin's source file where it failed (for warnings), if known.
        lineno: the line in ``filename``.
    """

    distribution: str
    entry_point: str
    cause: str
    filename: str | None = None
    lineno: int = 0

    def message(self) -> str:
        return f"idmzoo skipped plugin {self.distribution!r} (entry point {self.entry_point}): {self.cause}"


@dataclass(frozen=True)
class PluginTiming:
    """How long loading one plugin took (``idmzoo --debug`` lists them)."""

    distribution: str
    seconds: float


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else entry_point.value.split(":")[0].split(".")[0]


def plugin_entry_points() -> list[tuple[str, importlib.metadata.EntryPoint]]:
    """``(distribution, entry point)`` of every other distribution's plugin, in name order.

    idmzoo's own entry point (left by an older install's metadata) is skipped: its blocks
    come from :data:`BUILTIN_MODULES`.  (A distribution found twice on ``sys.path`` counts
    once: :func:`importlib.metadata.entry_points` keeps the first of each name.)
    """
    found = [
        (_distribution_name(entry_point), entry_point)
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    ]
    return sorted(
        ((dist, ep) for dist, ep in found if dist != BUILTIN_PACKAGE),
        key=lambda item: (item[0], item[1].name),
    )


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


def _plugin_frame(err: BaseException) -> tuple[str | None, int]:
    """The innermost frame of ``err``'s traceback outside idmzoo and importlib: the plugin's line."""
    found: tuple[str | None, int] = (None, 0)
    for frame in traceback.extract_tb(err.__traceback__):
        if not frame.filename.startswith(_IDMZOO_ROOT) and "importlib" not in frame.filename:
            found = (frame.filename, frame.lineno or 0)
    return found


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """A plugin that prints while loading must not corrupt ``idmzoo list-blocks --json``."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def run_plugin(
    dist: str,
    entry_point: importlib.metadata.EntryPoint,
    loading: Callable[[str], contextlib.AbstractContextManager[None]],
) -> tuple[PluginFailure | None, PluginTiming]:
    """Load one plugin inside ``loading(dist)``; report how it failed instead of raising.

    Any failure short of a ``KeyboardInterrupt`` is caught, ``SystemExit`` included (a
    plugin calling ``sys.exit`` must not end ``idmzoo list-blocks``), and whatever the
    plugin prints goes to stderr.
    """
    start = time.perf_counter()
    failure = None
    try:
        with _stdout_to_stderr(), loading(dist):
            _run_entry_point(entry_point)
    except (Exception, SystemExit) as err:
        filename, lineno = _plugin_frame(err)
        failure = PluginFailure(
            dist, f"{entry_point.name} = {entry_point.value}", one_line(err), filename, lineno
        )
    return failure, PluginTiming(dist, time.perf_counter() - start)


def import_builtins() -> None:
    """Import every module of :data:`BUILTIN_MODULES` (their decorators register the blocks)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
