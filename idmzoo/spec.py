"""The architecture spec: a pydantic model of the whole U-Net, each layer a named block.

A block field holds ``{"type": "<registered name>", ...params}``; the name is looked up
in the registry when the spec is validated and the rest is validated by that block's own
parameter model, so a misspelt parameter fails with its JSON path (``attention.num_head``)
before any module exists.  After the fields, the spec lays the model out (see
:mod:`idmzoo.layout`) and asks every block whether it can work where it is placed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WrapValidator,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import IdmzooError, SiteCheckError, UnknownBlockError
from .files import read_text
from .messages import did_you_mean, shorten
from .migrations import SPEC_VERSION, migrate_spec
from .overrides import PLACED_KINDS, SITE_KINDS, At, BlockPatch, Resolved, Where, resolve
from .registry import REGISTRY, BlockParams, Place

__all__ = [
    "Spec",
    "Override",
    "BlockField",
    "FamilyParams",
    "load_spec",
    "read_spec_file",
    "MAX_CHANNELS",
    "MAX_LEVELS",
    "MAX_IMAGE_SIZE",
    "MAX_RES_BLOCKS",
    "MAX_CLASSES",
    "MAX_MULT",
    "MAX_PARAMETERS",
    "MAX_BLOCKS",
    "MAX_ACTIVATION",
    "MAX_SPEC_BYTES",
    "MAX_SPEC_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_ERRORS",
]

#: Widest channel count of any field (in, out, model_channels); real models stay below 4096.
MAX_CHANNELS = 65536
#: Most levels (``channel_mult`` entries): 2**31 would be the bottleneck's downsampling rate.
MAX_LEVELS = 32
#: Largest ``image_size``, ``num_res_blocks``, ``num_classes`` and ``channel_mult`` entry.
MAX_IMAGE_SIZE = 65536
MAX_RES_BLOCKS = 1000
MAX_CLASSES = 1_000_000
MAX_MULT = 1024
#: A spec whose estimated parameter count exceeds this could never be built (80 GB in float32).
MAX_PARAMETERS = 20_000_000_000
#: Most blocks (sites) a layout may have; the largest published model has under 100.
MAX_BLOCKS = 10_000
#: Most elements of one sample's activation at any level (``channels * side ** dims``).
MAX_ACTIVATION = 2**40
#: Spec files: largest size read, deepest nesting of objects and lists, longest integer.
MAX_SPEC_BYTES = 16 * 2**20
MAX_SPEC_DEPTH = 64
MAX_INT_DIGITS = 100
#: Most errors one validation reports (the rest are counted, not listed).
MAX_ERRORS = 20
#: Longest block name looked up; longer ones are refused without a search for close names.
_MAX_NAME = 200

Loc = tuple[str | int, ...]
_DEFAULT_LABEL_EMBED = "embedding"
#: Fields added after the first spec files, with their dumped defaults: a dump leaves them out
#: while they hold these.
_QUIET_DEFAULTS: dict[str, Any] = {
    "activation": {"type": "silu"},
    "time_embed": {"type": "sinusoidal", "max_period": 10000.0},
    "label_embed": {"type": _DEFAULT_LABEL_EMBED},
    "overrides": [],
}


def _error(loc: Loc, message: str, value: Any, kind: str = "spec") -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value
    )


def _raise(title: str, errors: list[InitErrorDetails]) -> None:
    if len(errors) > MAX_ERRORS:  # bounded output: the first ones, then a count of the rest
        rest = len(errors) - MAX_ERRORS
        errors = [
            *errors[:MAX_ERRORS],
            _error(errors[MAX_ERRORS]["loc"], f"... and {rest} more errors", None),
        ]
    raise ValidationError.from_exception_data(title, errors)


def _block_validator(kind: str, default: str | None = None) -> Any:
    """Validate ``{"type": name, ...}`` against the parameter model registered as ``name``.

    An object without ``type`` changes only those parameters of the ``default`` block.
    """

    def validate(value: Any, handler: Any) -> BlockParams:
        if isinstance(value, str):  # shorthand: "group_norm32" means {"type": "group_norm32"}
            value = {"type": value}
        elif isinstance(value, BlockParams):
            value = value.model_dump()
        if not isinstance(value, Mapping):
            _raise(kind, [_error((), f'must be an object {{"type": <{kind} block name>, ...}}', value)])
        if "type" not in value and default is not None:
            value = {"type": default, **value}
        name = value.get("type")
        if not isinstance(name, str):
            message = f"missing or non-string block name; registered {kind} blocks: {', '.join(REGISTRY.names(kind))}"
            _raise(kind, [_error(("type",), message, name, "block_type")])
        if len(name) > _MAX_NAME:
            message = (
                f"unknown {kind} block {shorten(name)!r}: a name of {len(name):,} characters; registered "
                f"{kind} blocks: {', '.join(REGISTRY.names(kind))}"
            )
            _raise(kind, [_error(("type",), message, shorten(name), "unknown_block")])
        try:
            info = REGISTRY.get(kind, name)
        except UnknownBlockError as err:
            _raise(kind, [_error(("type",), str(err), name, "unknown_block")])
        if (
            name.rpartition(":")[2] != info.name
        ):  # a deprecated alias (REGISTRY.get warned): store the new name
            value = {**value, "type": info.name}
        return info.params.model_validate(dict(value))

    return validate


def _checked(kind: str, params: BlockParams, hook: str, *args: Any) -> Any:
    """Call a validation hook; a crash in it (a plugin bug) becomes a :class:`SiteCheckError`.

    ``hook`` is a method of the registered :class:`~idmzoo.registry.BlockInfo` (``check``,
    ``inner_norm_channels``, which also accept older hook signatures) or of the params
    themselves (``check_spec``, ``layout``).  So a faulty plugin is reported against its
    spec field, naming the block and its package, instead of escaping validation as an
    arbitrary exception.
    """
    info = REGISTRY.get(kind, params.type)
    try:
        if hook in ("check", "inner_norm_channels"):
            return getattr(info, hook)(params, *args)
        return getattr(params, hook)(*args)
    except SiteCheckError:
        raise
    except Exception as err:
        cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise SiteCheckError(
            None, f"{kind} block {info.name!r} (from package {info.package!r}) failed in {hook}(): {cause}"
        ) from err


def _dump_block(value: BlockParams) -> dict[str, Any]:
    return value.model_dump(mode="json")


def BlockField(kind: str, default: str | None = None) -> Any:  # noqa: N802 - reads as a type in annotations
    """The annotation of a spec field holding a block of ``kind`` (``default``: the block a
    partial object without ``type`` changes)."""
    return Annotated[
        BlockParams, WrapValidator(_block_validator(kind, default)), PlainSerializer(_dump_block)
    ]


def _override_block_validator(kind: str) -> Any:
    """A full block (a name, or an object with ``type``), or a :class:`BlockPatch` of parameters."""
    full = _block_validator(kind)

    def validate(value: Any, handler: Any) -> BlockParams | BlockPatch:
        if isinstance(value, (BlockParams, BlockPatch)):
            return value
        if isinstance(value, Mapping) and "type" not in value:
            if not value:
                _raise(
                    kind, [_error((), "an empty object changes nothing; name parameters or a block", value)]
                )
            return BlockPatch(dict(value))
        return full(value, handler)

    return validate


def _dump_override_block(value: BlockParams | BlockPatch) -> dict[str, Any]:
    return dict(value.values) if isinstance(value, BlockPatch) else _dump_block(value)


def _override_block(kind: str) -> Any:
    annotation = Annotated[
        Any, WrapValidator(_override_block_validator(kind)), PlainSerializer(_dump_override_block)
    ]
    return annotation | None


class Override(BaseModel):
    """One entry of ``Spec.overrides``: the blocks to use at the places ``at`` selects.

    A full block (a name, or an object with ``type``) replaces the block chosen so far
    there; an object without ``type`` keeps that block and changes only the parameters
    it gives.  Later entries win.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: At = Field(description="The places: level(s), stage, and/or a module path pattern.")
    norm: _override_block("norm") = Field(None, description="The norm inside the blocks there.")
    activation: _override_block("activation") = Field(
        None, description="The activation inside the blocks there."
    )
    resblock: _override_block("resblock") = Field(None, description="The residual blocks there.")
    attention: _override_block("attention") = Field(None, description="The attention blocks there.")
    upsample: _override_block("upsample") = Field(None, description="The upsamplers there.")
    downsample: _override_block("downsample") = Field(None, description="The downsamplers there.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        unknown = [key for key in value if key not in cls.model_fields]
        if unknown:
            key = str(unknown[0])
            placed = ", ".join(PLACED_KINDS)
            hint = (
                f"; {key} is model-wide: set the top-level field"
                if key in REGISTRY.kinds
                else did_you_mean(key, cls.model_fields)
            )
            _raise(
                "Override",
                [_error((key,), f"not a block kind an override can place (at, {placed}){hint}", value[key])],
            )
        if not any(value.get(kind) is not None for kind in PLACED_KINDS):
            _raise(
                "Override",
                [_error((), f"names no block; give at least one of {', '.join(PLACED_KINDS)}", value)],
            )
        return value

    @property
    def blocks(self) -> dict[str, BlockParams | BlockPatch]:
        """The block kinds this entry sets, and what it sets them to."""
        return {kind: getattr(self, kind) for kind in PLACED_KINDS if getattr(self, kind) is not None}

    @model_serializer(mode="plain")
    def _dump(self) -> dict[str, Any]:
        return {"at": self.at.dump(), **{kind: _dump_override_block(b) for kind, b in self.blocks.items()}}


class FamilyParams(BlockParams):
    """Base of a model family's parameters; the family decides the model's overall shape."""

    def check_spec(self, spec: Spec) -> None:
        """Reject a spec this family cannot build; raise :class:`SiteCheckError` whose ``field`` is a spec field."""

    def layout(self, spec: Spec) -> Any:
        """The :class:`~idmzoo.layout.UNetLayout` of ``spec`` under this family."""
        raise NotImplementedError


def _one_multiplier_error(value: Any, handler: Any) -> Any:
    """One error for a bad ``channel_mult`` entry, not one per member of the int | float union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "multiplier",
            "should be a positive finite number at most {limit}, but got {value}",
            {"limit": MAX_MULT, "value": shorten(repr(value))},
        ) from None


_Channels = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
_ResBlocks = Annotated[int, Field(ge=1, le=MAX_RES_BLOCKS)]


def _one_depth_error(value: Any, handler: Any) -> Any:
    """One error for a bad ``num_res_blocks``, not one per member of the int | list union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "res_blocks",
            "should be an integer from 1 to {limit}, or a list of them (one per level), but got {value}",
            {"limit": MAX_RES_BLOCKS, "value": shorten(repr(value))},
        ) from None


_Multiplier = Annotated[
    Annotated[int, Field(gt=0, le=MAX_MULT)]
    | Annotated[float, Field(gt=0, le=MAX_MULT, allow_inf_nan=False)],
    WrapValidator(_one_multiplier_error),
]


def _default(kind: str, name: str, description: str = "") -> Any:
    text = description or f"The {kind} block."
    return Field(default={"type": name}, validate_default=True, description=text)


class Spec(BaseModel):
    """A whole U-Net: its size, its conditioning, and the block chosen for each layer kind.

    Field names and meanings follow improved-diffusion's ``UNetModel`` arguments;
    ``attention_resolutions`` are *downsampling rates* (1 = full resolution, 2 = after
    the first downsample, ...), as in the reference constructors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    family: BlockField("family", "unet") = _default("model family", "unet")
    in_channels: _Channels = Field(description="Channels of the input image (before any low-res concat).")
    model_channels: Annotated[int, Field(ge=2, le=MAX_CHANNELS)] = Field(
        description="Base width; level widths are int(mult * model_channels). At least 2 (the timestep "
        "embedding has model_channels // 2 frequencies)."
    )
    out_channels: _Channels = Field(description="Channels of the output (6 when learning sigma on RGB).")
    num_res_blocks: Annotated[_ResBlocks | tuple[_ResBlocks, ...], WrapValidator(_one_depth_error)] = Field(
        description="Residual blocks per level on the encoder path: one count for every level, or a "
        "list with one entry per level (the decoder has one more per level)."
    )
    attention_resolutions: tuple[Annotated[int, Field(ge=1, le=2 ** (MAX_LEVELS - 1))], ...] = Field(
        (),
        max_length=MAX_LEVELS,
        description="Downsampling rates at which attention blocks follow the residual blocks.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout rate inside residual blocks.")
    channel_mult: tuple[_Multiplier, ...] = Field(
        (1, 2, 4, 8),
        min_length=1,
        max_length=MAX_LEVELS,
        description="Width multiplier of each level; one level per entry.",
    )
    dims: Literal[1, 2, 3] = Field(
        2, description="Signal dimensions: 1 (sequences), 2 (images) or 3 (video/volumes)."
    )
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)] | None = Field(
        None, description="Class-conditional with this many classes."
    )
    image_size: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)] | None = Field(
        None, description="Side length of the input; required by heads with positional embeddings."
    )
    use_fp16: bool = Field(False, description="Keep the convolutions of the torso in float16.")
    norm: BlockField("norm", "group_norm32") = _default("norm", "group_norm32")
    activation: BlockField("activation", "silu") = _default(
        "activation", "silu", "The activation inside residual blocks, the time MLP and the output heads."
    )
    resblock: BlockField("resblock", "resblock") = _default("resblock", "resblock")
    attention: BlockField("attention", "legacy_attention") = _default("attention", "legacy_attention")
    upsample: BlockField("upsample", "nearest_conv") = _default("upsample", "nearest_conv")
    downsample: BlockField("downsample", "strided_conv") = _default("downsample", "strided_conv")
    time_embed: BlockField("time_embed", "sinusoidal") = _default(
        "time_embed", "sinusoidal", "The timestep embedding (module time_embed)."
    )
    label_embed: BlockField("label_embed", "embedding") = _default(
        "label_embed", "embedding", "The class-label embedding (module label_emb), when num_classes is set."
    )
    pool: BlockField("pool") | None = Field(None, description="The encoder family's output head.")
    overrides: tuple[Override, ...] = Field(
        (),
        description="Blocks chosen by place: each entry's at selects levels, stages or module paths, "
        "and its blocks replace (or, without type, change the parameters of) the blocks there. "
        "Later entries win.",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Leave out the newer fields while they hold their defaults, so a spec that does not
        use them dumps exactly as before (the zoo's spec files, saved artifacts)."""
        data = handler(self)
        for name, default in _QUIET_DEFAULTS.items():
            if name in data and (data[name] == default or (not default and not data[name])):
                del data[name]
        return data

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """A saved spec of an older ``spec_version`` becomes a current one (see :mod:`idmzoo.migrations`)."""
        return migrate_spec(data) if isinstance(data, Mapping) else data

    @field_validator("attention_resolutions")
    @classmethod
    def _sorted_rates(cls, rates: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(rates)))

    @model_validator(mode="before")
    @classmethod
    def _short_unknown_keys(cls, data: Any) -> Any:
        """An unknown key is reported shortened: a 100 MB key is not echoed in every message."""
        if isinstance(data, Mapping):
            long = [k for k in data if isinstance(k, str) and len(k) > 80 and k not in cls.model_fields]
            if long:
                message = f"unknown field of {len(long[0]):,} characters; the fields are {', '.join(cls.model_fields)}"
                _raise(cls.__name__, [_error((shorten(long[0]),), message, None, "extra_forbidden")])
        return data

    @model_validator(mode="after")
    def _check_structure(self) -> Spec:
        errors = self._size_errors() or self._level_errors()
        if errors:
            _raise(type(self).__name__, errors)
        try:
            _checked("family", self.family, "check_spec", self)
        except SiteCheckError as err:
            errors.append(_error((err.field,) if err.field else ("family",), str(err), None))
        if not errors:
            errors = self._block_errors()
        if errors:
            _raise(type(self).__name__, errors)
        return self

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        """The residual blocks of each level on the encoder path (the decoder has one more)."""
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.channel_mult)
        return self.num_res_blocks

    def block_at(self, kind: str, where: Where | None = None) -> BlockParams:
        """The block of ``kind`` built at ``where`` (a :class:`~idmzoo.Site` or
        :class:`~idmzoo.Place`): the top-level field, changed by every override selecting it.

        Model-wide kinds (``family``, ``time_embed``, ``label_embed``, ``pool``), and
        ``where=None``, give the top-level field.
        """
        base = getattr(self, kind)
        if where is None or not self.overrides or kind not in PLACED_KINDS:
            return base
        resolved, errors = resolve(kind, base, self.overrides, where)
        if errors:  # validation saw every place of the layout; this is a place outside it
            loc, message, _ = errors[0]
            raise SiteCheckError(None, f"{'.'.join(map(str, loc))}: {message}")
        return resolved.params

    def estimate_size(self, num_res_blocks: int | None = None) -> dict[str, int]:
        """Parameter counts of the model's parts with the built-in blocks, from arithmetic on widths.

        Nothing is laid out, so it costs microseconds whatever the spec claims.  Keys:
        ``time`` (the timestep MLP), ``num_classes`` (the label embedding), ``in_channels``
        (the stem), ``out_channels`` (the output convolution), ``torso`` (residual and
        attention blocks), ``blocks`` (the number of blocks, attention and resampling
        included, counting the decoder even for the encoder family).
        """
        depths = (
            self.res_blocks_per_level
            if num_res_blocks is None
            else (num_res_blocks,) * len(self.channel_mult)
        )
        k, mc = 3**self.dims, self.model_channels
        emb = 4 * mc
        widths = [int(mult * mc) for mult in self.channel_mult]
        attended = [2**level in self.attention_resolutions for level in range(len(widths))]

        def resblock(cin: int, cout: int) -> int:
            return k * (cin * cout + cout * cout) + emb * cout + (cin * cout if cin != cout else 0)

        torso, ch = 0, widths[0]
        for width, res, attends in zip(widths, depths, attended, strict=True):
            attention = 4 * width * width if attends else 0
            torso += resblock(ch, width) + (res - 1) * resblock(width, width) + res * attention
            torso += (res + 1) * (resblock(2 * width, width) + attention)
            ch = width
        torso += 2 * resblock(ch, ch) + 4 * ch * ch
        levels = len(widths)
        return {
            "time": mc * emb + emb * emb,
            "num_classes": (self.num_classes or 0) * emb,
            "in_channels": k * self.in_channels * widths[0],
            "out_channels": k * widths[0] * self.out_channels,
            "torso": torso,
            "blocks": 1
            + 3
            + sum((2 * res + 1) * (1 + attends) for res, attends in zip(depths, attended, strict=True))
            + 2 * (levels - 1),
        }

    def _size_errors(self) -> list[InitErrorDetails]:
        """Refuse, before laying anything out, a spec that could never be built or run."""
        if len(self.res_blocks_per_level) != len(self.channel_mult):
            return []  # reported by _level_errors, at num_res_blocks
        sizes = self.estimate_size()
        if sizes["blocks"] > MAX_BLOCKS:
            message = (
                f"num_res_blocks={self.num_res_blocks} with {len(self.channel_mult)} levels lays out "
                f"about {sizes['blocks']:,} blocks; at most {MAX_BLOCKS:,} are allowed"
            )
            return [_error(("num_res_blocks",), message, self.num_res_blocks)]
        total = sum(v for key, v in sizes.items() if key != "blocks")
        if total > MAX_PARAMETERS:
            parts = {key: v for key, v in sizes.items() if key not in ("blocks", "time")}
            field = max(parts, key=parts.__getitem__)
            if field == "torso":
                small = self.estimate_size(num_res_blocks=min(2, *self.res_blocks_per_level))
                field = "model_channels" if small["torso"] > MAX_PARAMETERS / 2 else "num_res_blocks"
            message = (
                f"the model would have about {total:,} parameters (model_channels={self.model_channels}, "
                f"channel_mult={shorten(str(list(self.channel_mult)))}, num_res_blocks={self.num_res_blocks}, "
                f"num_classes={self.num_classes}); at most {MAX_PARAMETERS:,} are allowed"
            )
            return [_error((field,), message, getattr(self, field))]
        if self.image_size is not None:
            for level, mult in enumerate(self.channel_mult):
                side = self.image_size // 2**level
                elements = 2 * int(mult * self.model_channels) * side**self.dims
                if elements > MAX_ACTIVATION:
                    message = (
                        f"image_size={self.image_size} in {self.dims}-D gives one sample an activation of "
                        f"{elements:,} elements at level {level}; at most {MAX_ACTIVATION:,} are allowed"
                    )
                    return [_error(("image_size",), message, self.image_size)]
        return []

    def _level_errors(self) -> list[InitErrorDetails]:
        errors = []
        levels = len(self.channel_mult)
        if not isinstance(self.num_res_blocks, int) and len(self.num_res_blocks) != levels:
            message = (
                f"a list of {len(self.num_res_blocks)} counts, but channel_mult has {levels} levels: "
                f"give one count per level, or a single count for all"
            )
            errors.append(_error(("num_res_blocks",), message, list(self.num_res_blocks)))
        for i, mult in enumerate(self.channel_mult):
            if int(mult * self.model_channels) < 1:
                message = f"{mult} * model_channels={self.model_channels} leaves no channels at level {i}"
                errors.append(_error(("channel_mult", i), message, mult))
        reached = [2**level for level in range(levels)]
        for i, rate in enumerate(self.attention_resolutions):
            if rate not in reached:
                message = (
                    f"downsampling rate {rate} is never reached: with {len(reached)} levels the "
                    f"rates are {', '.join(map(str, reached))}"
                )
                errors.append(_error(("attention_resolutions", i), message, rate))
        bottleneck_rate = reached[-1]
        if self.image_size is not None and self.image_size % bottleneck_rate:
            message = (
                f"image_size={self.image_size} is not a multiple of {bottleneck_rate}, the "
                f"downsampling rate at the bottleneck of {len(reached)} levels: every level must "
                f"halve the image exactly for the skip connections to line up"
            )
            errors.append(_error(("image_size",), message, self.image_size))
        if self.num_classes is None and self.label_embed.type != _DEFAULT_LABEL_EMBED:
            message = "a label embedding needs num_classes; set num_classes or remove label_embed"
            errors.append(_error(("label_embed",), message, self.label_embed.type))
        return errors

    def _block_errors(self) -> list[InitErrorDetails]:
        """Ask every block whether it can work at each place the layout puts it.

        Each block is the one resolved for its place (the top-level field changed by any
        override selecting it), and an error is reported at the JSON path that chose the
        parameter at fault (``overrides.0.attention.num_heads``).
        """
        errors: dict[Loc, InitErrorDetails] = {}

        def report(loc: Loc, message: str, value: Any) -> None:
            errors.setdefault(loc, _error(loc, message, value))

        def check(resolved: Resolved, place: Place) -> None:
            try:
                _checked(place.kind, resolved.params, "check", place)
            except SiteCheckError as err:
                if err.spec_field:
                    loc: Loc = (err.spec_field,)
                    value = getattr(self, err.spec_field, None)
                else:
                    loc = resolved.loc(err.field)
                    value = getattr(resolved.params, err.field or "type", None)
                report(loc, f"{err} ({place.describe()})", value)

        def at(kind: str, where: Where) -> Resolved:
            resolved, problems = resolve(kind, getattr(self, kind), self.overrides, where)
            for loc, message, value in problems:
                report(loc, message, value)
            return resolved

        try:
            layout = _checked("family", self.family, "layout", self)
        except SiteCheckError as err:
            return [_error(("family",), str(err), self.family.type)]
        sites = [site for site in layout.sites() if site.kind != "stem"]
        head = getattr(layout, "head", None)
        if head is None:  # a plugin family's layout without a head site
            last = len(self.channel_mult) - 1
            head = self._place(
                "head", "out", "head", layout.final_channels, self.out_channels, last, layout.final_ds
            )
        for loc, message, value in self._selection_errors([*sites, head]):
            report(loc, message, value)
        if errors:
            return list(errors.values())
        # Norms of the top-level block are checked once per channel count, model-wide;
        # a norm an override chose, at each place it lands.
        base_norms: dict[int, tuple[Resolved, Place]] = {}
        placed_norms: dict[tuple[Any, ...], tuple[Resolved, Place]] = {}
        inner: list[tuple[Resolved, int, Place]] = []

        def need_norm(norm: Resolved, channels: int, place: Place, *, inside: bool) -> None:
            if norm.overridden:
                key = (norm.source, tuple(sorted(norm.field_sources.items())), channels, place.path)
                placed_norms.setdefault(
                    key,
                    (
                        norm,
                        self._place(
                            "norm", place.path, place.stage, channels, channels, place.level, place.ds
                        ),
                    ),
                )
            elif inside:
                inner.append((norm, channels, place))
            else:
                base_norms.setdefault(
                    channels, (norm, self._place("norm", "", "any", channels, channels, None, 1))
                )

        def place_block(kind: str, resolved: Resolved, site: Where, channels: int, out: int, ds: int) -> None:
            place = self._place(kind, site.path, site.stage, channels, out, site.level, ds)
            check(resolved, place)
            check(at("activation", site), replace(place, kind="activation"))
            norm = at("norm", site)
            widths = (channels,) if kind == "pool" else (channels, out)  # a head's output is not normalized
            for width in widths:
                need_norm(norm, width, place, inside=False)
            for width in _checked(kind, resolved.params, "inner_norm_channels", place):
                need_norm(norm, width, place, inside=True)

        for site in sites:
            place_block(site.kind, at(site.kind, site), site, site.channels, site.out_channels, site.ds)
        if self.pool is not None:
            place_block(
                "pool", Resolved(self.pool, ("pool",)), head, head.channels, head.out_channels, head.ds
            )
        else:
            norm = at("norm", head)
            need_norm(
                norm,
                head.channels,
                self._place("norm", head.path, head.stage, head.channels, head.channels, head.level, head.ds),
                inside=False,
            )
            head_place = self._place(
                "activation", head.path, head.stage, head.channels, head.channels, head.level, head.ds
            )
            check(at("activation", head), head_place)
        emb = 4 * self.model_channels
        embed = self._place("time_embed", "time_embed", "any", self.model_channels, emb, None, 1)
        check(Resolved(self.time_embed, ("time_embed",)), embed)
        check(Resolved(self.activation, ("activation",)), replace(embed, kind="activation"))
        if self.num_classes is not None:
            labels = self._place("label_embed", "label_emb", "any", self.num_classes, emb, None, 1)
            check(Resolved(self.label_embed, ("label_embed",)), labels)
        for norm, channels, place in inner:
            base_norms.setdefault(
                channels,
                (
                    norm,
                    self._place("norm", place.path, place.stage, channels, channels, place.level, place.ds),
                ),
            )
        for channels in sorted(base_norms):
            check(*base_norms[channels])
        for norm, place in placed_norms.values():
            check(norm, place)
        return list(errors.values())

    def _selection_errors(self, places: list[Any]) -> list[tuple[Loc, str, Any]]:
        """Overrides whose ``at`` selects no place, or no block of a kind they set."""
        found = []
        levels = len(self.channel_mult)
        for index, entry in enumerate(self.overrides):
            selected = [place for place in places if entry.at.matches(place)]
            loc: Loc = ("overrides", index, "at")
            if not selected:
                found.append(
                    (loc, f"selects no block: {self._why_nothing(entry.at, places, levels)}", entry.at.dump())
                )
                continue
            missing = [level for level in entry.at.level or () if level >= levels]
            if missing:
                message = (
                    f"level {missing[0]} is not a level of this model: it has {levels} (0 to {levels - 1})"
                )
                found.append((loc, message, entry.at.dump()))
            kinds = {place.kind for place in selected}
            for kind in entry.blocks:
                lands = {kind, "upsample", "downsample"} if kind == "resblock" else {kind}
                if kind in SITE_KINDS and not kinds & lands:
                    message = (
                        f"the places `at` selects hold no {kind} block (they hold {', '.join(sorted(kinds))}), "
                        f"so this {kind} would never be built"
                    )
                    found.append((("overrides", index, kind), message, None))
        return found

    @staticmethod
    def _why_nothing(at: At, places: list[Any], levels: int) -> str:
        if at.level is not None and not any(level < levels for level in at.level):
            return (
                f"the model has {levels} levels (0 to {levels - 1}), so level {list(at.level)} does not exist"
            )
        if at.path is not None and not any(At(path=at.path).matches(place) for place in places):
            examples = ", ".join(p.path for p in (places[0], places[-2], places[-1]) if p.path)
            return f"no block's path matches {at.path!r} (paths look like {examples})"
        return f"no block is at {json.dumps(at.dump())}"

    def _place(
        self, kind: str, path: str, stage: Any, channels: int, out_channels: int, level: int | None, ds: int
    ) -> Place:
        return Place(kind, path, stage, channels, out_channels, level, ds, self.dims, self.image_size, self)

    def layout(self) -> Any:
        """The :class:`~idmzoo.layout.UNetLayout` of this spec (its family's)."""
        return self.family.layout(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The spec as saved: every field written out, with ``spec_version`` first, so it keeps loading."""
        return json.dumps({"spec_version": SPEC_VERSION, **self.model_dump(mode="json")}, indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` (what :func:`load_spec` reads back); returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLong(len(text.lstrip("-")))
    return int(text)


class _TooLong(ValueError):
    """An integer literal longer than :data:`MAX_INT_DIGITS` digits."""


def _depth(data: Any) -> int:
    """The nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_SPEC_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _parse_spec_json(text: str, source: str) -> Any:
    """JSON data of spec text, parsed with the depth and integer-size limits; ``source`` names it."""
    try:
        data = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise IdmzooError(f"{source} is not valid JSON: {err}") from err
    except _TooLong as err:
        raise IdmzooError(
            f"{source} holds an integer of {err.args[0]:,} digits; at most {MAX_INT_DIGITS} are read"
        ) from None
    except RecursionError:
        raise IdmzooError(f"{source} is nested too deeply (at most {MAX_SPEC_DEPTH} levels)") from None
    if _depth(data) > MAX_SPEC_DEPTH:
        raise IdmzooError(f"{source} is nested more than {MAX_SPEC_DEPTH} levels deep")
    return data


def read_spec_file(path: str | os.PathLike[str]) -> Any:
    """The JSON data of a spec file, read with limits; every failure names the file and the cause.

    Regular UTF-8 files only, at most :data:`MAX_SPEC_BYTES` bytes, nested at most
    :data:`MAX_SPEC_DEPTH` deep, integers of at most :data:`MAX_INT_DIGITS` digits.
    """
    text = read_text(path, "spec file", max_bytes=MAX_SPEC_BYTES)
    return _parse_spec_json(text, f"spec file {str(Path(path))!r}")


def load_spec(spec: Spec | Mapping[str, Any] | str | os.PathLike[str]) -> Spec:
    """A :class:`Spec` from a spec, a dict, JSON text (a string starting with ``{``), or a ``.json`` path.

    A saved spec of an older ``spec_version`` is migrated; a newer one raises
    :class:`~idmzoo.errors.SpecVersionError`.

    Files are read with the limits of :func:`read_spec_file`.

    Raises:
        pydantic.ValidationError: the spec is invalid (each error names its JSON path).
        IdmzooError: the file cannot be read, is not UTF-8 JSON, or exceeds a limit.
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return Spec.model_validate(spec)
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        if len(spec) > MAX_SPEC_BYTES:
            raise IdmzooError(f"spec text of {len(spec):,} characters is over the {MAX_SPEC_BYTES:,} limit")
        return Spec.model_validate(_parse_spec_json(spec, "spec text"))
    if isinstance(spec, (str, os.PathLike)):
        return Spec.model_validate(read_spec_file(spec))
    raise TypeError(
        f"spec must be a Spec, a dict, JSON text or a path to a .json file, but got {type(spec).__name__}"
    )
