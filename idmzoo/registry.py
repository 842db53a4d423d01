"""The block registry: every layer idmzoo can build is a named, typed, registered block.

A block is a factory (an ``nn.Module`` class or any callable returning one) plus a
pydantic model of its own parameters.  Built-in blocks and third-party plugins register
through the same :func:`register_block`; a spec then names a block by ``kind`` and
``name``.  Plugins are discovered lazily (see :mod:`idmzoo.plugins`) the first time the
registry is consulted.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib.metadata
import inspect
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from . import plugins
from .errors import DuplicateBlockError, InvalidBlockError, UnknownBlockError

__all__ = [
    "BLOCK_KINDS",
    "BlockParams",
    "BlockInfo",
    "BlockRegistry",
    "SiteCheckError",
    "REGISTRY",
    "register_block",
    "get_block",
    "list_blocks",
]

#: The kinds of block a spec chooses by name.  ``family`` is the model family itself
#: (U-Net, super-resolution U-Net, encoder) and ``pool`` the encoder's output head.
BLOCK_KINDS: tuple[str, ...] = (
    "family",
    "norm",
    "resblock",
    "attention",
    "upsample",
    "downsample",
    "pool",
)


#: The registry whose plugins are being loaded, so their ``register_block`` calls land there.
_LOADING_INTO: ContextVar[BlockRegistry | None] = ContextVar("idmzoo_loading_into", default=None)


class SiteCheckError(ValueError):
    """Raised by :meth:`BlockParams.check` when a block cannot work at some place in the model.

    Args:
        field: the parameter of the block at fault (reported as the JSON path
            ``<kind>.<field>``), or ``None`` for the block as a whole.
        message: what is wrong and what would be valid.
    """

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class BlockParams(BaseModel):
    """Base class of every block's parameter model.

    Subclass it with the block's own parameters (typed, with defaults and
    ``Field(description=...)``).  ``type`` is filled in by the registry with the name the
    block is registered under.  Unknown keys are rejected so typos fail at validation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="The registered name of the block.")

    def check(self, channels: int, stage: str) -> None:
        """Reject a place in the model where this block cannot work, before anything is built.

        Called for every place the block will be built, with its input channel count and
        the U-Net stage (``"input"``, ``"middle"``, ``"output"`` or ``"head"``).  Norms are
        checked against every channel count that a norm will see.  Raise
        :class:`SiteCheckError` naming the offending parameter.
        """

    def inner_norm_channels(self, channels: int) -> tuple[int, ...]:
        """Channel counts of the norms the block builds besides those at its input and output.

        A block with an inner layer of its own width that it normalizes (e.g. an MLP head's
        hidden layer) returns that width, so the spec's norm is checked against it at
        validation instead of failing inside the build.  ``channels`` is the block's input.
        """
        return ()

    def factory_kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments for the factory (everything but ``type``)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name != "type"}


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
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BlockParams]
    description: str
    package: str
    override: bool = False

    @property
    def qualified_name(self) -> str:
        """``package:name``, which names the block unambiguously."""
        return f"{self.package}:{self.name}"

    def create(self, config: BlockParams, *args: Any, **kwargs: Any) -> Any:
        """Call the factory with the builder's arguments and the block's own parameters."""
        return self.factory(*args, **kwargs, **config.factory_kwargs())


def _distribution_of(obj: Any) -> str:
    """The installed distribution that ships ``obj``'s top-level package, else that package."""
    top = (getattr(obj, "__module__", None) or "__main__").split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else top


def _code_fields(params: type[BaseModel]) -> list[str]:
    """Fields of ``params`` whose validation imports or calls its input (ImportString, Callable).

    Read from the compiled pydantic schema, so a field hidden in a list, an optional or an
    ``Annotated`` is found as well.
    """
    found: set[str] = set()

    def walk(node: Any, field: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, field)
        if not isinstance(node, dict):
            return
        function = node.get("function")
        validator = function.get("function") if isinstance(function, dict) else None
        if node.get("type") == "callable" or getattr(validator, "__name__", "") == "import_string":
            found.add(field)
        for key, value in node.items():
            if key == "fields" and node.get("type") == "model-fields":
                for name, sub in value.items():
                    walk(sub, name)
            else:
                walk(value, field)

    walk(params.__pydantic_core_schema__, params.__name__)
    return sorted(found)


class BlockRegistry:
    """Stores blocks by kind and name; finds them with ranked "did you mean" errors.

    Args:
        kinds: the block kinds this registry accepts.
        discover: whether the first lookup loads the ``idmzoo.blocks`` entry points.
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
        #: ``(distribution, cause)`` of every plugin that failed to load.
        self.failed_plugins: list[tuple[str, str]] = []

    # -- discovery -------------------------------------------------------------------

    def ensure_discovered(self) -> None:
        """Load the entry-point plugins once, on the first use of the registry.

        Other threads wait until loading has finished, so none sees half the plugins;
        the loading thread itself (a plugin looking a block up) passes straight through.
        """
        if not self._discover or self._discovered:
            return
        with self._lock:
            if self._discovered or self._discovering:
                return
            self._discovering = True
            try:
                plugins.load_entry_point_plugins(self)
            finally:
                self._discovering = False
                self._discovered = True

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
    ) -> BlockInfo:
        """Register ``factory`` as block ``name`` of ``kind``; see :func:`register_block`."""
        self._check_registration(kind, name, factory, params, description)
        package = package or self._loading_package or _distribution_of(factory)
        typed_params = create_model(
            f"{params.__name__}[{name}]",
            __base__=params,
            __module__=params.__module__,
            __doc__=params.__doc__,
            type=(Literal[name, f"{package}:{name}"], Field(name, description="The block's name.")),
        )
        info = BlockInfo(kind, name, factory, typed_params, description.strip(), package, override)
        with self._lock:
            existing = self._blocks[kind].get(name)
            if existing is not None and existing.override and not override:
                return existing  # an override claimed the name on purpose, before this loaded
            if existing is not None and not override:
                raise DuplicateBlockError(
                    f"{kind} block {name!r} is registered twice: by {existing.package!r} "
                    f"and by {package!r}. Rename one of them, or pass override=True to "
                    f"replace {existing.package}'s on purpose."
                )
            self._blocks[kind][name] = info
            if self._journal is not None:
                self._journal.append((info, existing))
        return info

    def _check_registration(
        self, kind: str, name: str, factory: Any, params: Any, description: Any
    ) -> None:
        if kind not in self._blocks:
            raise InvalidBlockError(f"kind must be one of {', '.join(self.kinds)}, but got {kind!r}")
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise InvalidBlockError(
                f"{kind} block name must be a non-empty string without ':' or surrounding "
                f"spaces, but got {name!r}"
            )
        if not callable(factory):
            raise InvalidBlockError(
                f"{kind} block {name!r}: factory must be callable, but got {type(factory).__name__}"
            )
        if not (inspect.isclass(params) and issubclass(params, BlockParams)):
            raise InvalidBlockError(
                f"{kind} block {name!r}: params must be a subclass of idmzoo.BlockParams, "
                f"but got {params!r}"
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
        self._check_kind(kind)
        with self._lock:
            info = self._blocks[kind].pop(name, None)
        if info is None:
            raise UnknownBlockError(f"no {kind} block named {name!r} to unregister")
        return info

    # -- lookup --------------------------------------------------------------------

    def _check_kind(self, kind: str) -> None:
        if kind not in self._blocks:
            raise UnknownBlockError(f"unknown block kind {kind!r}; valid kinds: {', '.join(self.kinds)}")

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
        raise UnknownBlockError(self.unknown_name_message(kind, name))

    def unknown_name_message(self, kind: str, name: str) -> str:
        """The message for an unknown ``name``: closest matches first, then every valid name."""
        known = sorted(self._blocks[kind])
        close = difflib.get_close_matches(name.rpartition(":")[2], known, n=3, cutoff=0.5)
        message = f"unknown {kind} block {name!r}."
        if close:
            message += f" Did you mean {' or '.join(repr(c) for c in close)}?"
        message += f" Registered {kind} blocks: {', '.join(known) or '(none)'}."
        for dist, cause in self.failed_plugins:
            message += f" Note: plugin {dist!r} failed to load ({cause})."
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
    params: type[BlockParams],
    description: str,
    package: str | None = None,
    override: bool = False,
) -> Any:
    """Register a block, directly or as a class/function decorator.

    The block goes to the registry whose plugins are being loaded (see
    :meth:`BlockRegistry.loading`), else to the global :data:`REGISTRY`.

    Args:
        kind: one of :data:`BLOCK_KINDS`.
        name: the name specs will use; unique per kind.  May be given qualified in specs
            as ``"<package>:<name>"``.
        factory: the ``nn.Module`` class or callable; omit it to use as a decorator.
        params: the block's :class:`BlockParams` subclass.
        description: one line shown by ``idmzoo list-blocks``.
        package: the providing distribution; defaults to the plugin being loaded, or the
            distribution that ships ``factory``'s module.
        override: replace the block of the same kind and name, whether it registers
            before or after this one.

    Returns:
        The :class:`BlockInfo` now registered under the name (an earlier override's, if
        one claimed it), or (as a decorator) the decorated factory unchanged.

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
                kind, name, target, params, description, package=package, override=override
            )
            return target

        return decorator
    return registry.register(
        kind, name, factory, params, description, package=package, override=override
    )


def get_block(kind: str, name: str) -> BlockInfo:
    """The registered block ``name`` of ``kind``; see :meth:`BlockRegistry.get`."""
    return REGISTRY.get(kind, name)


def list_blocks(kind: str | None = None, pattern: str = "*") -> list[BlockInfo]:
    """Every registered block, optionally of one ``kind`` and matching an fnmatch ``pattern``."""
    return REGISTRY.list(kind, pattern)
