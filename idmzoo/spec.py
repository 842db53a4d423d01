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
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import IdmzooError, SiteCheckError, UnknownBlockError
from .files import read_text
from .messages import shorten
from .migrations import SPEC_VERSION, migrate_spec
from .registry import REGISTRY, BlockParams, Place

__all__ = [
    "Spec",
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


def _block_validator(kind: str) -> Any:
    """Validate ``{"type": name, ...}`` against the parameter model registered as ``name``."""

    def validate(value: Any, handler: Any) -> BlockParams:
        if isinstance(value, str):  # shorthand: "group_norm32" means {"type": "group_norm32"}
            value = {"type": value}
        elif isinstance(value, BlockParams):
            value = value.model_dump()
        if not isinstance(value, Mapping):
            _raise(kind, [_error((), f'must be an object {{"type": <{kind} block name>, ...}}', value)])
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


def BlockField(kind: str) -> Any:  # noqa: N802 - reads as a type in annotations
    """The annotation of a spec field holding a block of ``kind``."""
    return Annotated[BlockParams, WrapValidator(_block_validator(kind)), PlainSerializer(_dump_block)]


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
_Multiplier = Annotated[
    Annotated[int, Field(gt=0, le=MAX_MULT)]
    | Annotated[float, Field(gt=0, le=MAX_MULT, allow_inf_nan=False)],
    WrapValidator(_one_multiplier_error),
]


def _default(kind: str, name: str) -> Any:
    return Field(default={"type": name}, validate_default=True, description=f"The {kind} block.")


class Spec(BaseModel):
    """A whole U-Net: its size, its conditioning, and the block chosen for each layer kind.

    Field names and meanings follow improved-diffusion's ``UNetModel`` arguments;
    ``attention_resolutions`` are *downsampling rates* (1 = full resolution, 2 = after
    the first downsample, ...), as in the reference constructors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    family: BlockField("family") = _default("model family", "unet")
    in_channels: _Channels = Field(description="Channels of the input image (before any low-res concat).")
    model_channels: Annotated[int, Field(ge=2, le=MAX_CHANNELS)] = Field(
        description="Base width; level widths are int(mult * model_channels). At least 2 (the timestep "
        "embedding has model_channels // 2 frequencies)."
    )
    out_channels: _Channels = Field(description="Channels of the output (6 when learning sigma on RGB).")
    num_res_blocks: Annotated[int, Field(ge=1, le=MAX_RES_BLOCKS)] = Field(
        description="Residual blocks per level on the encoder path."
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
    norm: BlockField("norm") = _default("norm", "group_norm32")
    resblock: BlockField("resblock") = _default("resblock", "resblock")
    attention: BlockField("attention") = _default("attention", "legacy_attention")
    upsample: BlockField("upsample") = _default("upsample", "nearest_conv")
    downsample: BlockField("downsample") = _default("downsample", "strided_conv")
    pool: BlockField("pool") | None = Field(None, description="The encoder family's output head.")

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

    def estimate_size(self, num_res_blocks: int | None = None) -> dict[str, int]:
        """Parameter counts of the model's parts with the built-in blocks, from arithmetic on widths.

        Nothing is laid out, so it costs microseconds whatever the spec claims.  Keys:
        ``time`` (the timestep MLP), ``num_classes`` (the label embedding), ``in_channels``
        (the stem), ``out_channels`` (the output convolution), ``torso`` (residual and
        attention blocks), ``blocks`` (the number of blocks, attention and resampling
        included, counting the decoder even for the encoder family).
        """
        res = self.num_res_blocks if num_res_blocks is None else num_res_blocks
        k, mc = 3**self.dims, self.model_channels
        emb = 4 * mc
        widths = [int(mult * mc) for mult in self.channel_mult]
        attended = sum(1 for level in range(len(widths)) if 2**level in self.attention_resolutions)

        def resblock(cin: int, cout: int) -> int:
            return k * (cin * cout + cout * cout) + emb * cout + (cin * cout if cin != cout else 0)

        torso, ch = 0, widths[0]
        for level, width in enumerate(widths):
            attention = 4 * width * width if 2**level in self.attention_resolutions else 0
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
            "blocks": 1 + 3 + levels * (2 * res + 1) + attended * (2 * res + 1) + 2 * (levels - 1),
        }

    def _size_errors(self) -> list[InitErrorDetails]:
        """Refuse, before laying anything out, a spec that could never be built or run."""
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
                small = self.estimate_size(num_res_blocks=min(2, self.num_res_blocks))
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
        for i, mult in enumerate(self.channel_mult):
            if int(mult * self.model_channels) < 1:
                message = f"{mult} * model_channels={self.model_channels} leaves no channels at level {i}"
                errors.append(_error(("channel_mult", i), message, mult))
        reached = [2**level for level in range(len(self.channel_mult))]
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
        return errors

    def _block_errors(self) -> list[InitErrorDetails]:
        """Ask every block whether it can work at each place the layout puts it."""
        errors: dict[Loc, InitErrorDetails] = {}

        def check(params: BlockParams, place: Place) -> None:
            try:
                _checked(place.kind, params, "check", place)
            except SiteCheckError as err:
                if err.spec_field:
                    loc: Loc = (err.spec_field,)
                    value = getattr(self, err.spec_field, None)
                else:
                    loc = (place.kind, err.field) if err.field else (place.kind,)
                    value = getattr(params, err.field or "type", None)
                errors.setdefault(loc, _error(loc, f"{err} ({place.describe()})", value))

        try:
            layout = _checked("family", self.family, "layout", self)
        except SiteCheckError as err:
            return [_error(("family",), str(err), self.family.type)]
        places = [
            self._place(
                site.kind, site.path, site.stage, site.channels, site.out_channels, site.level, site.ds
            )
            for site in layout.sites()
            if site.kind != "stem"
        ]
        if self.pool is not None:
            last = len(self.channel_mult) - 1
            places.append(
                self._place(
                    "pool", "out", "head", layout.final_channels, self.out_channels, last, layout.final_ds
                )
            )
        norms = {
            channels: self._place("norm", "", "any", channels, channels, None, 1)
            for channels in sorted(layout.normalized_channels())
        }
        for place in places:
            params = getattr(self, place.kind)
            check(params, place)
            for inner in _checked(place.kind, params, "inner_norm_channels", place):
                norms.setdefault(
                    inner, self._place("norm", place.path, place.stage, inner, inner, place.level, place.ds)
                )
        for channels in sorted(norms):
            check(self.norm, norms[channels])
        return list(errors.values())

    def _place(
        self, kind: str, path: str, stage: Any, channels: int, out_channels: int, level: int | None, ds: int
    ) -> Place:
        return Place(kind, path, stage, channels, out_channels, level, ds, self.dims, self.image_size, self)

    def layout(self) -> Any:
        """The :class:`~idmzoo.layout.UNetLayout` of this spec."""
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
