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
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import IdmzooError, SiteCheckError, UnknownBlockError
from .messages import did_you_mean
from .overrides import PLACED_KINDS, SITE_KINDS, At, BlockPatch, Resolved, Where, resolve
from .registry import REGISTRY, BlockParams, Place

__all__ = ["Spec", "Override", "BlockField", "FamilyParams", "load_spec"]

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
        try:
            info = REGISTRY.get(kind, name)
        except UnknownBlockError as err:
            _raise(kind, [_error(("type",), str(err), name, "unknown_block")])
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


def _default(kind: str, name: str, description: str = "") -> Any:
    text = description or f"The {kind} block."
    return Field(default={"type": name}, validate_default=True, description=text)


class Spec(BaseModel):
    """A whole U-Net: its size, its conditioning, and the block chosen for each layer kind.

    Field names and meanings follow improved-diffusion's ``UNetModel`` arguments;
    ``attention_resolutions`` are *downsampling rates* (1 = full resolution, 2 = after
    the first downsample, ...), as in the reference constructors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: BlockField("family", "unet") = _default("model family", "unet")
    in_channels: PositiveInt = Field(description="Channels of the input image (before any low-res concat).")
    model_channels: PositiveInt = Field(
        description="Base width; level widths are int(mult * model_channels)."
    )
    out_channels: PositiveInt = Field(description="Channels of the output (6 when learning sigma on RGB).")
    num_res_blocks: PositiveInt | tuple[PositiveInt, ...] = Field(
        description="Residual blocks per level on the encoder path: one count for every level, or a "
        "list with one entry per level (the decoder has one more per level)."
    )
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


def load_spec(spec: Spec | Mapping[str, Any] | str | os.PathLike[str]) -> Spec:
    """A :class:`Spec` from a spec, a dict, or the path of a ``.json`` file.

    Raises:
        pydantic.ValidationError: the spec is invalid (each error names its JSON path).
        IdmzooError: the file cannot be read or is not JSON.
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Mapping):
        return Spec.model_validate(spec)
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
    raise TypeError(f"spec must be a Spec, a dict or a path to a .json file, but got {type(spec).__name__}")
