"""The block registry: every layer idmzoo can build is a named, typed, registered block.

A block is a factory (an ``nn.Module`` class or any callable returning one) plus a
pydantic model of its own parameters.  Built-in blocks and third-party plugins register
through the same :func:`register_block`; a spec then names a block by ``kind`` and
``name``.  The registry owns all loading state: the first lookup imports idmzoo's own
block modules and then runs every other distribution's entry points (see
:mod:`idmzoo.registry.discovery`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib.metadata
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from ..errors import (
    DuplicateBlockError,
    IdmzooDeprecationWarning,
    IdmzooPluginWarning,
    InvalidBlockError,
    PluginLoadError,
    UnknownBlockError,
)
from ..messages import did_you_mean, shorten
from . import discovery
from .params import BlockParams, Place

__all__ = [
    "BLOCK_KINDS",
    "BlockInfo",
    "BlockRegistry",
    "REGISTRY",
    "register_block",
    "get_block",
    "list_blocks",
]

#: The kinds of block a spec chooses by name.  ``family`` is the model family itself
#: (U-Net, super-resolution U-Net, encoder), ``time_embed`` and ``label_embed`` the
#: timestep and class embeddings, and ``pool`` the encoder's output head.
BLOCK_KINDS: tuple[str, ...] = (
    "family",
    "norm",
    "activation",
    "resblock",
    "attention",
    "upsample",
    "downsample",
    "time_embed",
    "label_embed",
    "pool",
)

#: The registry whose plugins are being loaded, so their ``register_block`` calls land there.
_LOADING_INTO: ContextVar[BlockRegistry | None] = ContextVar("idmzoo_loading_into", default=None)
_REGISTRY_DIR = str(Path(__file__).resolve().parent)


@functools.cache
def _distributions_by_package() -> dict[str, list[str]]:
    """``packages_distributions()`` read once: scanning site-packages costs tens of milliseconds."""
    return importlib.metadata.packages_distributions()


def _distribution_of(obj: Any) -> str:
    """The installed distribution that ships ``obj``'s top-level package, else that package."""
    top = (getattr(obj, "__module__", None) or "__main__").split(".")[0]
    if top == "idmzoo":
        return discovery.BUILTIN_PACKAGE
    dists = _distributions_by_package().get(top)
    return dists[0] if dists else top


def _stacklevel() -> int:
    """The stack level of the first frame outside this package: the plugin's registration line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_REGISTRY_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _takes_place(hook: Callable[..., Any]) -> bool:
    """Whether a validation hook has the current ``(place)`` signature, not ``(channels, stage)``."""
    return len(inspect.signature(hook).parameters) == 2  # self, place


def _code_fields(params: type[BaseModel]) -> list[str]:
    """Fields of ``params`` whose validation imports or calls its input (ImportString, Callable).

    Read from the compiled pydantic schema, so a field hidden in a list, an optional or an
    ``Annotated`` is found as well.
    """
    found: set[str] = set()

    def walk(node: Any, name: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, name)
        if not isinstance(node, dict):
            return
        function = node.get("function")
        validator = function.get("function") if isinstance(function, dict) else None
        if node.get("type") == "callable" or getattr(validator, "__name__", "") == "import_string":
            found.add(name)
        for key, value in node.items():
            if key == "fields" and node.get("type") == "model-fields":
                for sub_name, sub in value.items():
                    walk(sub, sub_name)
            else:
                walk(value, name)

    walk(params.__pydantic_core_schema__, params.__name__)
    return sorted(found)


@dataclass(frozen=True)
class BlockInfo:
    """One registered block.

    Attributes:
        kind: one of :data:`BLOCK_KINDS`.
        name: the name specs use in ``{"type": name}``.
        factory: callable building the ``nn.Module``; its calling convention depends on
            ``kind`` (see ``docs/plugins.md``).
        params: the parameter model, a subclass of the registered :class:`BlockParams`
            whose ``type`` is fixed to this name.
        description: one line for ``idmzoo list-blocks``.
        package: the distribution that registered it.
        override: registered with ``override=True``: it replaces any other registration
            of the name, whichever distribution loads first.
        aliases: former names that still resolve to this block, with an
            :class:`~idmzoo.errors.IdmzooDeprecationWarning` naming the current one.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BlockParams]
    description: str
    package: str
    override: bool = False
    aliases: tuple[str, ...] = ()
    _legacy_hooks: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def qualified_name(self) -> str:
        """``package:name``, which names the block unambiguously."""
        return f"{self.package}:{self.name}"

    def create(self, config: BlockParams, *args: Any, **kwargs: Any) -> Any:
        """Call the factory with the builder's arguments and the block's own parameters."""
        return self.factory(*args, **kwargs, **config.factory_kwargs())

    def check(self, config: BlockParams, place: Place) -> None:
        """Run the block's ``check`` hook at ``place`` (older ``(channels, stage)`` hooks too)."""
        if "check" in self._legacy_hooks:
            config.check(place.channels, place.stage)  # type: ignore[call-arg]
        else:
            config.check(place)

    def inner_norm_channels(self, config: BlockParams, place: Place) -> tuple[int, ...]:
        """The block's ``inner_norm_channels`` at ``place`` (older ``(channels)`` hooks too)."""
        if "inner_norm_channels" in self._legacy_hooks:
            return tuple(config.inner_norm_channels(place.channels))  # type: ignore[arg-type]
        return tuple(config.inner_norm_channels(place))


class BlockRegistry:
    """Stores blocks by kind and name; finds them with ranked "did you mean" errors.

    Args:
        kinds: the block kinds this registry accepts.
        discover: whether the first lookup loads idmzoo's built-ins and the plugins.
    """

    def __init__(self, kinds: tuple[str, ...] = BLOCK_KINDS, *, discover: bool = True) -> None:
        self.kinds = kinds
        self._blocks: dict[str, dict[str, BlockInfo]] = {kind: {} for kind in kinds}
        self._lock = threading.RLock()
        self._discover = discover
        self._discovered = False
        self._discovering = False
        self._loading_package: str | None = None
        #: ``(registered, replaced)`` pairs of the plugin being loaded, to undo on failure.
        self._journal: list[tuple[BlockInfo, BlockInfo | None]] | None = None
        #: The built-in registrations, so a fresh registry starts with them too.
        self._builtins: list[BlockInfo] = []
        #: Every plugin that failed to load, and how long each plugin took.
        self.failed_plugins: list[discovery.PluginFailure] = []
        self.plugin_timings: list[discovery.PluginTiming] = []

    # -- discovery -------------------------------------------------------------------

    def ensure_discovered(self) -> None:
        """Load the built-ins, then every plugin, once, on the first use of the registry.

        Other threads wait until loading has finished, so none sees half the plugins;
        the loading thread itself (a plugin looking a block up) passes straight through.
        In strict mode (``IDMZOO_STRICT_PLUGINS=1``) every lookup raises while a plugin
        is broken, after everything that could be loaded was.

        Raises:
            PluginLoadError: strict mode, and at least one plugin failed to load.
        """
        if self._discover and not self._discovered:
            with self._lock:
                if not (self._discovered or self._discovering):
                    self._discovering = True
                    try:
                        self._load_builtins()
                        self._load_plugins()
                    finally:
                        self._discovering = False
                        self._discovered = True
        if self.failed_plugins and discovery.strict_plugins() and not self._discovering:
            raise PluginLoadError(
                f"{len(self.failed_plugins)} plugin(s) failed to load ({discovery.STRICT_ENV_VAR} is set): "
                + "; ".join(failure.message() for failure in self.failed_plugins)
            )

    def _load_builtins(self) -> None:
        if self is REGISTRY:
            with self.loading(discovery.BUILTIN_PACKAGE):
                discovery.import_builtins()
            return
        REGISTRY._load_builtins()
        for info in REGISTRY._builtins:
            self._blocks[info.kind].setdefault(info.name, info)

    def _load_plugins(self) -> None:
        for dist, entry_point in discovery.plugin_entry_points():
            failure, timing = discovery.run_plugin(dist, entry_point, self.loading)
            self.plugin_timings.append(timing)
            if failure is not None:
                self.failed_plugins.append(failure)
                if not discovery.strict_plugins():
                    warnings.warn_explicit(
                        failure.message(),
                        IdmzooPluginWarning,
                        failure.filename or "<plugin>",
                        failure.lineno,
                        module=dist,
                    )
            elif timing.seconds > discovery.SLOW_PLUGIN_SECONDS:
                warnings.warn(
                    f"plugin {dist!r} took {timing.seconds:.1f} s to load, which every idmzoo command "
                    f"pays; `idmzoo --debug list-blocks` lists every plugin's load time",
                    IdmzooPluginWarning,
                    stacklevel=2,
                )

    @contextlib.contextmanager
    def loading(self, package: str) -> Iterator[None]:
        """Attribute registrations to ``package``; undo all of them if the body raises.

        Used by the plugin loader so a plugin that fails half-way leaves nothing behind:
        its new names are removed and the blocks it overrode are put back.
        """
        with self._lock:
            previous = self._loading_package, self._journal
            self._loading_package, self._journal = package, []
            token = _LOADING_INTO.set(self)
            try:
                yield
            except BaseException:
                for info, replaced in reversed(self._journal):
                    if replaced is None:
                        self._blocks[info.kind].pop(info.name, None)
                    else:
                        self._blocks[info.kind][info.name] = replaced
                raise
            finally:
                _LOADING_INTO.reset(token)
                self._loading_package, self._journal = previous

    # -- registration -------------------------------------------------------------------

    def register(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        params: type[BlockParams],
        description: str,
        *,
        package: str | None = None,
        override: bool = False,
        aliases: tuple[str, ...] = (),
    ) -> BlockInfo:
        """Register ``factory`` as block ``name`` of ``kind``; see :func:`register_block`."""
        self._check_registration(kind, name, factory, params, description)
        aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        for alias in aliases:
            self._check_name(kind, alias, "alias")
        package = package or self._loading_package or _distribution_of(factory)
        typed_params = create_model(
            f"{params.__name__}[{name}]",
            __base__=params,
            __module__=params.__module__,
            __doc__=params.__doc__,
            type=(Literal[name, f"{package}:{name}"], Field(name, description="The block's name.")),
        )
        legacy = frozenset(
            hook for hook in ("check", "inner_norm_channels") if not _takes_place(getattr(params, hook))
        )
        info = BlockInfo(
            kind, name, factory, typed_params, description.strip(), package, override, aliases, legacy
        )
        with self._lock:
            self._check_aliases(kind, name, aliases)
            existing = self._blocks[kind].get(name)
            if existing is not None and existing.override and not override:
                warnings.warn(
                    f"{kind} block {name!r} of {package!r} is not used: {existing.package!r} replaced "
                    f"it with override=True; name {existing.package}'s or rename this one",
                    IdmzooPluginWarning,
                    stacklevel=_stacklevel(),
                )
                return existing
            if existing is not None and not override:
                raise DuplicateBlockError(
                    f"{kind} block {name!r} is registered twice: by {existing.package!r} "
                    f"and by {package!r}. Rename one of them, or pass override=True to "
                    f"replace {existing.package}'s on purpose."
                )
            if existing is not None and existing.package != package:
                warnings.warn(
                    f"{kind} block {name!r} of {package!r} (override=True) replaces the one of "
                    f"{existing.package!r} in every spec that names it",
                    IdmzooPluginWarning,
                    stacklevel=_stacklevel(),
                )
            self._blocks[kind][name] = info
            if package == discovery.BUILTIN_PACKAGE and self is REGISTRY:
                self._builtins.append(info)
            if self._journal is not None:
                self._journal.append((info, existing))
        return info

    def _check_name(self, kind: str, name: Any, what: str = "name") -> None:
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise InvalidBlockError(
                f"{kind} block {what} must be a non-empty string without ':' or surrounding "
                f"spaces, but got {shorten(repr(name))}"
            )

    def _check_aliases(self, kind: str, name: str, aliases: tuple[str, ...]) -> None:
        """An alias may name no other block, and no other block's alias."""
        for alias in aliases:
            owner = self._blocks[kind].get(alias) or self._by_alias(kind, alias)
            if alias == name or (owner is not None and owner.name != name):
                taken = "is the block's own name" if alias == name else f"is taken by {owner.qualified_name}"
                raise DuplicateBlockError(f"{kind} block {name!r}: alias {alias!r} {taken}")

    def _by_alias(self, kind: str, alias: str) -> BlockInfo | None:
        return next((info for info in self._blocks[kind].values() if alias in info.aliases), None)

    def _check_registration(self, kind: str, name: str, factory: Any, params: Any, description: Any) -> None:
        if kind not in self._blocks:
            raise InvalidBlockError(f"kind must be one of {', '.join(self.kinds)}, but got {kind!r}")
        self._check_name(kind, name)
        if not callable(factory):
            raise InvalidBlockError(
                f"{kind} block {name!r}: factory must be callable, but got {type(factory).__name__}"
            )
        if not (inspect.isclass(params) and issubclass(params, BlockParams)):
            raise InvalidBlockError(
                f"{kind} block {name!r}: params must be a subclass of idmzoo.BlockParams, but got {params!r}"
            )
        if not isinstance(description, str) or not description.strip():
            raise InvalidBlockError(f"{kind} block {name!r}: description must be a non-empty string")
        code = _code_fields(params)
        if code:
            raise InvalidBlockError(
                f"{kind} block {name!r}: params field(s) {', '.join(code)} would import or call "
                f"what a spec names (ImportString or Callable); a spec is data, so take a plain "
                f"value or the name of a registered block instead"
            )

    def unregister(self, kind: str, name: str) -> BlockInfo:
        """Remove a block (tests and plugin teardown); returns what was removed."""
        self.ensure_discovered()
        self._check_kind(kind)
        with self._lock:
            info = self._blocks[kind].pop(name, None)
        if info is None:
            raise UnknownBlockError(f"no {kind} block named {name!r} to unregister")
        return info

    # -- lookup --------------------------------------------------------------------

    def _check_kind(self, kind: str) -> None:
        if kind not in self._blocks:
            raise UnknownBlockError(
                f"unknown block kind {shorten(repr(kind))}; valid kinds: {', '.join(self.kinds)}"
            )

    def get(self, kind: str, name: str) -> BlockInfo:
        """The block registered as ``name`` (or ``package:name``) of ``kind``.

        Raises:
            UnknownBlockError: naming the kind, the closest registered names, and any
                plugin that failed to load (the likely reason a name is missing).
        """
        self.ensure_discovered()
        self._check_kind(kind)
        if not isinstance(name, str):
            raise UnknownBlockError(f"{kind} block name must be a string, but got {type(name).__name__}")
        package, _, plain = name.rpartition(":")
        info = self._blocks[kind].get(plain)
        if info is not None and package in ("", info.package):
            return info
        info = self._by_alias(kind, plain) if info is None else None
        if info is not None and package in ("", info.package):
            warnings.warn(
                f"{kind} block {plain!r} is a deprecated name of {info.name!r} (from {info.package}); "
                f"write {info.name!r} instead",
                IdmzooDeprecationWarning,
                stacklevel=_stacklevel(),
            )
            return info
        raise UnknownBlockError(self.unknown_name_message(kind, name))

    def unknown_name_message(self, kind: str, name: str) -> str:
        """The message for an unknown ``name``: closest matches first, then every valid name."""
        known = sorted(self._blocks[kind])
        message = f"unknown {kind} block {shorten(repr(name))}."
        message += did_you_mean(name.rpartition(":")[2], known)
        message += f" Registered {kind} blocks: {', '.join(known) or '(none)'}."
        for failure in self.failed_plugins:
            message += f" Note: plugin {failure.distribution!r} failed to load ({failure.cause})."
        return message

    def list(self, kind: str | None = None, pattern: str = "*") -> list[BlockInfo]:
        """Registered blocks sorted by kind then name, filtered by ``kind`` and an fnmatch pattern.

        Returns a snapshot, so registering while iterating over the result is safe.
        """
        self.ensure_discovered()
        if kind is not None:
            self._check_kind(kind)
        with self._lock:
            kinds = [kind] if kind else list(self.kinds)
            found = [
                info
                for k in kinds
                for info in self._blocks[k].values()
                if fnmatch.fnmatchcase(info.name, pattern)
                or fnmatch.fnmatchcase(info.qualified_name, pattern)
            ]
        return sorted(found, key=lambda info: (self.kinds.index(info.kind), info.name))

    def names(self, kind: str) -> list[str]:
        """The sorted names of ``kind``."""
        return [info.name for info in self.list(kind)]


#: The process-wide registry every spec resolves against.
REGISTRY = BlockRegistry()


def register_block(
    kind: str,
    name: str,
    factory: Callable[..., Any] | None = None,
    *,
    params: type[BlockParams] = BlockParams,
    description: str,
    package: str | None = None,
    override: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """Register a block, directly or as a class/function decorator.

    The block goes to the registry whose plugins are being loaded (see
    :meth:`BlockRegistry.loading`), else to the global :data:`REGISTRY`.

    Args:
        kind: one of :data:`BLOCK_KINDS`.
        name: the name specs will use; unique per kind.  May be given qualified in specs
            as ``"<package>:<name>"``.
        factory: the ``nn.Module`` class or callable; omit it to use as a decorator.
        params: the block's :class:`BlockParams` subclass (``BlockParams`` itself for a
            block without parameters).
        description: one line shown by ``idmzoo list-blocks``.
        package: the providing distribution; defaults to the plugin being loaded, or the
            distribution that ships ``factory``'s module.
        override: replace the block of the same kind and name, whether it registers
            before or after this one (with a warning naming both distributions).
        aliases: former names of a renamed block: specs naming one still resolve to this
            block, with an :class:`~idmzoo.errors.IdmzooDeprecationWarning` giving ``name``.

    Returns:
        The :class:`BlockInfo` now registered under the name (an earlier override's, if
        one claimed it, with a warning), or (as a decorator) the decorated factory unchanged.

    Raises:
        DuplicateBlockError: the name is taken and ``override`` is false.
        InvalidBlockError: a bad kind, name, factory or params model.

    Examples:
        >>> @register_block("norm", "my_norm", params=MyNormParams, description="...")
        ... class MyNorm(nn.Module): ...
    """
    registry = _LOADING_INTO.get() or REGISTRY
    if factory is None:

        def decorator(target: Callable[..., Any]) -> Callable[..., Any]:
            registry.register(
                kind, name, target, params, description, package=package, override=override, aliases=aliases
            )
            return target

        return decorator
    return registry.register(
        kind, name, factory, params, description, package=package, override=override, aliases=aliases
    )


def get_block(kind: str, name: str) -> BlockInfo:
    """The registered block ``name`` of ``kind``; see :meth:`BlockRegistry.get`."""
    return REGISTRY.get(kind, name)


def list_blocks(kind: str | None = None, pattern: str = "*") -> list[BlockInfo]:
    """Every registered block, optionally of one ``kind`` and matching an fnmatch ``pattern``."""
    return REGISTRY.list(kind, pattern)
