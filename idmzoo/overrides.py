"""Overrides by place: which block parameters apply at each place of a model.

A spec's top-level block fields choose a block for every place; its ``overrides`` change
that choice where an ``at`` selector matches.  :func:`resolve` is the one function that
answers "which block of ``kind`` is built here", so validation, the builder, the shape
check and the summary cannot disagree.  It also says which JSON path chose each
parameter, so an error names the override at fault (``overrides.0.attention.num_heads``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .registry import REGISTRY, BlockParams

__all__ = ["PLACED_KINDS", "SITE_KINDS", "At", "BlockPatch", "Resolved", "resolve", "Where"]

Loc = tuple[str | int, ...]

#: Block kinds built in every group of blocks, which an override may choose by place.
#: ``norm`` and ``activation`` are built inside the blocks at a place (the place is that
#: of the block that builds them).
PLACED_KINDS: tuple[str, ...] = ("norm", "activation", "resblock", "attention", "upsample", "downsample")
#: The kinds that are a layout site of their own: an override of one must land on a site of it.
SITE_KINDS: frozenset[str] = frozenset({"resblock", "attention", "upsample", "downsample"})


class Where(Protocol):
    """What an ``at`` selector is matched against: a :class:`~idmzoo.Site` or a :class:`~idmzoo.Place`."""

    @property
    def stage(self) -> str: ...

    @property
    def level(self) -> int | None: ...

    @property
    def path(self) -> str: ...


class At(BaseModel):
    """Which places an override applies to; every key given must match.

    The path pattern also selects every block inside a group it names, so
    ``output_blocks.5`` selects ``output_blocks.5.0``, ``output_blocks.5.1``, ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: tuple[NonNegativeInt, ...] | None = Field(
        None, description="Level(s): 0 is full resolution, one level per channel_mult entry."
    )
    stage: Literal["input", "middle", "output", "head"] | None = Field(
        None, description="The encoder path, the bottleneck, the decoder path, or the output head."
    )
    path: str | None = Field(None, min_length=1, description="fnmatch pattern on the module path.")

    @model_validator(mode="after")
    def _selects(self) -> At:
        if self.level is None and self.stage is None and self.path is None:
            raise ValueError(
                "give at least one of level, stage, path (to change a block everywhere, set its top-level field)"
            )
        return self

    @field_validator("level", mode="before")
    @classmethod
    def _one_level(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int) and not isinstance(value, bool) else value

    def matches(self, where: Where) -> bool:
        """Whether ``where`` is one of the places this selector names."""
        if self.level is not None and where.level not in self.level:
            return False
        if self.stage is not None and where.stage != self.stage:
            return False
        if self.path is not None:
            parts = where.path.split(".")
            prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
            return any(fnmatch.fnmatchcase(prefix, self.path) for prefix in prefixes)
        return True

    def dump(self) -> dict[str, Any]:
        """The keys that were given, as JSON data (a single level stays a list)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.model_dump().items()
            if value is not None
        }


@dataclass(frozen=True)
class BlockPatch:
    """An override's block object without ``type``: it keeps the block chosen so far and
    changes only these parameters (validated at each place, against that block's model)."""

    values: Mapping[str, Any]

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self.values.items())))


@dataclass(frozen=True)
class Resolved:
    """The block of a kind at one place, and the JSON path that chose each of its parameters.

    Attributes:
        params: the block's validated parameters.
        source: the path of the block object that chose the block (``("attention",)`` or
            ``("overrides", 0, "attention")``).
        field_sources: parameters set later by partial overrides, and their paths.
    """

    params: BlockParams
    source: Loc
    field_sources: Mapping[str, Loc] = field(default_factory=dict)

    def loc(self, name: str | None) -> Loc:
        """The JSON path of parameter ``name`` (``None``: of the block as a whole)."""
        if name is None:
            return self.source
        return (*self.field_sources.get(name, self.source), name)

    @property
    def overridden(self) -> bool:
        """Whether an override chose the block or changed any of its parameters."""
        return self.source[0] == "overrides" or bool(self.field_sources)


#: An error found while resolving: its JSON path, message and offending value.
ResolveError = tuple[Loc, str, Any]


def resolve(
    kind: str, base: BlockParams, overrides: Any, where: Where
) -> tuple[Resolved, list[ResolveError]]:
    """The block of ``kind`` at ``where``: ``base``, then every matching override in order.

    Args:
        kind: a block kind of :data:`PLACED_KINDS`.
        base: the spec's top-level block of that kind.
        overrides: the spec's override entries (objects with ``at`` and ``blocks``).
        where: the place.

    Returns:
        The resolved block, and the errors of partial overrides whose parameters the block
        there rejects (each at the override's JSON path; that override is then skipped).
    """
    resolved, errors = Resolved(base, (kind,)), []
    for index, entry in enumerate(overrides):
        block = entry.blocks.get(kind)
        if block is None or not entry.at.matches(where):
            continue
        loc: Loc = ("overrides", index, kind)
        if isinstance(block, BlockParams):
            resolved = Resolved(block, loc)
            continue
        current = resolved.params
        info = REGISTRY.get(kind, current.type)
        try:
            params = info.params.model_validate({**current.model_dump(), **block.values})
        except ValidationError as err:
            for detail in err.errors():
                message = f"{detail['msg']} (for {kind} block {info.name!r} at {where.path})"
                errors.append(((*loc, *detail["loc"]), message, detail.get("input")))
            continue
        sources = {**resolved.field_sources, **{name: loc for name in block.values}}
        resolved = Resolved(params, resolved.source, sources)
    return resolved, errors
