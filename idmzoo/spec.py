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
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PlainSerializer,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import IdmzooError, SiteCheckError, UnknownBlockError
from .migrations import SPEC_VERSION, migrate_spec
from .registry import REGISTRY, BlockParams, Place

__all__ = ["Spec", "BlockField", "FamilyParams", "load_spec"]

Loc = tuple[str | int, ...]


def _error(loc: Loc, message: str, value: Any, kind: str = "spec") -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value
    )


def _raise(title: str, errors: list[InitErrorDetails]) -> None:
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


def _default(kind: str, name: str) -> Any:
    return Field(default={"type": name}, validate_default=True, description=f"The {kind} block.")


class Spec(BaseModel):
    """A whole U-Net: its size, its conditioning, and the block chosen for each layer kind.

    Field names and meanings follow improved-diffusion's ``UNetModel`` arguments;
    ``attention_resolutions`` are *downsampling rates* (1 = full resolution, 2 = after
    the first downsample, ...), as in the reference constructors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: BlockField("family") = _default("model family", "unet")
    in_channels: PositiveInt = Field(description="Channels of the input image (before any low-res concat).")
    model_channels: PositiveInt = Field(
        description="Base width; level widths are int(mult * model_channels)."
    )
    out_channels: PositiveInt = Field(description="Channels of the output (6 when learning sigma on RGB).")
    num_res_blocks: PositiveInt = Field(description="Residual blocks per level on the encoder path.")
    attention_resolutions: tuple[PositiveInt, ...] = Field(
        (), description="Downsampling rates at which attention blocks follow the residual blocks."
    )
    dropout: NonNegativeFloat = Field(0.0, lt=1.0, description="Dropout rate inside residual blocks.")
    channel_mult: tuple[PositiveInt | Annotated[PositiveFloat, AllowInfNan(False)], ...] = Field(
        (1, 2, 4, 8), min_length=1, description="Width multiplier of each level; one level per entry."
    )
    dims: Literal[1, 2, 3] = Field(
        2, description="Signal dimensions: 1 (sequences), 2 (images) or 3 (video/volumes)."
    )
    num_classes: PositiveInt | None = Field(None, description="Class-conditional with this many classes.")
    image_size: PositiveInt | None = Field(
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

    @model_validator(mode="after")
    def _check_structure(self) -> Spec:
        errors = self._level_errors()
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


def load_spec(spec: Spec | Mapping[str, Any] | str | os.PathLike[str]) -> Spec:
    """A :class:`Spec` from a spec, a dict, JSON text (a string starting with ``{``), or a ``.json`` path.

    A saved spec of an older ``spec_version`` is migrated; a newer one raises
    :class:`~idmzoo.errors.SpecVersionError`.

    Raises:
        pydantic.ValidationError: the spec is invalid (each error names its JSON path).
        IdmzooError: the file cannot be read or is not JSON.
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return Spec.model_validate(spec)
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as err:
            raise IdmzooError(f"spec text is not valid JSON: {err}") from err
        return Spec.model_validate(data)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        try:
            text = path.read_text()
        except OSError as err:
            raise IdmzooError(f"cannot read spec file {str(path)!r}: {err.strerror or err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise IdmzooError(f"spec file {str(path)!r} is not valid JSON: {err}") from err
        return Spec.model_validate(data)
    raise TypeError(
        f"spec must be a Spec, a dict, JSON text or a path to a .json file, but got {type(spec).__name__}"
    )
