"""A per-stage summary of a built model: the blocks each stage uses, its output shape, its size
and its forward FLOPs.

The shapes come from the model's layout (the same :class:`~idmzoo.layout.UNetLayout` it
was built from), not from running it, so a model on the meta device, or one too large to
run here, is summarised instantly.  Without an image size the spatial axes stay symbolic
(``[N, 256, H/8, W/8]``).  The FLOPs are counted by ``torch.utils.flop_counter`` over one
forward pass on the meta device (shapes only: no memory, no arithmetic), with the
model's own weights swapped for meta tensors, so a model on any device can be counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import IdmzooError
from .messages import format_shape
from .registry import BLOCK_KINDS

if TYPE_CHECKING:
    import torch.nn as nn

    from .layout import Site
    from .spec import Spec

__all__ = ["StageSummary", "PlaceSummary", "ModelSummary", "summarize", "count_flops", "format_table"]

Shape = tuple[int | str, ...]
_AXES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
#: Stages in the order data flows through them; any other child of the model comes after.
#: Kinds built inside other blocks, listed after them.
_NESTED = ("norm", "activation")
_STAGE_ORDER = ("time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out")


@dataclass(frozen=True)
class StageSummary:
    """One top-level part of the model.

    Attributes:
        name: the attribute of the model (``input_blocks``, ``middle_block``, ``out``, ...).
        blocks: ``(kind, name, count)`` of every registered block built inside it,
            nested ones (such as the norms inside residual blocks) included.
        output_shape: the shape it returns, or ``None`` when the layout does not say.
        parameters: its parameter count.
        flops: the FLOPs of its forward pass for one input, or ``None`` when not counted.
    """

    name: str
    blocks: tuple[tuple[str, str, int], ...]
    output_shape: Shape | None
    parameters: int
    flops: int | None = None


@dataclass(frozen=True)
class PlaceSummary:
    """The blocks chosen at one stage and level (what ``overrides`` may change).

    Attributes:
        stage: ``input``, ``middle``, ``output`` or ``head``.
        level: the level (0 is full resolution).
        blocks: ``(kind, label, count)``: the label is the block's name, with the
            parameters that differ from the spec's top-level block of that kind (an
            override changed them), e.g. ``new_order_attention(num_head_channels=16)``.
            Norms and activations are listed only where an override changed them.
    """

    stage: str
    level: int
    blocks: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`summarize` reports; ``str()`` of it is the table ``idmzoo build`` prints.

    Attributes:
        family: the spec's model family.
        input_shape: the shape of the model's input ``x``.
        stages: one entry per top-level module, in the model's order.
        parameters: the total parameter count.
        places: the blocks chosen at each stage and level, in forward order.
        flops: the forward FLOPs of the whole model for one input (batch 1), or ``None``
            when not counted.
    """

    family: str
    input_shape: Shape
    stages: tuple[StageSummary, ...]
    parameters: int
    flops: int | None = None
    places: tuple[PlaceSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return {
            "family": self.family,
            "input_shape": list(self.input_shape),
            "parameters": self.parameters,
            "flops": self.flops,
            "stages": [
                {
                    "name": stage.name,
                    "output_shape": None if stage.output_shape is None else list(stage.output_shape),
                    "parameters": stage.parameters,
                    "flops": stage.flops,
                    "blocks": [{"kind": k, "name": n, "count": c} for k, n, c in stage.blocks],
                }
                for stage in self.stages
            ],
            "places": [
                {
                    "stage": place.stage,
                    "level": place.level,
                    "blocks": [{"kind": k, "name": n, "count": c} for k, n, c in place.blocks],
                }
                for place in self.places
            ],
        }

    def __str__(self) -> str:
        counted = self.flops is not None
        rows = [
            [
                stage.name,
                format_shape(stage.output_shape),
                f"{stage.parameters:,}",
                *([_gflops(stage.flops)] if counted else []),
                ", ".join(f"{name} x{count}" for _, name, count in stage.blocks) or "-",
            ]
            for stage in self.stages
        ]
        rows.append(["total", "", f"{self.parameters:,}", *([_gflops(self.flops)] if counted else []), ""])
        header = f"family {self.family}, input {format_shape(self.input_shape)}"
        headers = ["stage", "output shape", "parameters", *(["GFLOPs/image"] if counted else []), "blocks"]
        table = format_table(headers, rows, right={2, 3} if counted else {2})
        places = [
            [
                place.stage,
                str(place.level),
                ", ".join(f"{label} x{count}" for _, label, count in place.blocks),
            ]
            for place in self.places
        ]
        if not places:
            return f"{header}\n{table}"
        by_place = format_table(["stage", "level", "blocks chosen"], places, right={1})
        return f"{header}\n{table}\n\nblocks by stage and level\n{by_place}"


def _gflops(flops: int | None) -> str:
    return "-" if flops is None else f"{flops / 1e9:,.3f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] = frozenset()) -> str:
    """Plain-text columns separated by two spaces; the last column is not padded.

    Args:
        headers: the column titles.
        rows: the cells, as strings.
        right: indexes of the columns to right-align (numbers).

    Returns:
        The table, one line per row, headers first.
    """
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(width) if i in right else (cell if i == len(row) - 1 else cell.ljust(width))
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _spatial(spec: Spec, image_size: int | None, rate: int) -> Shape:
    """The spatial axes at downsampling ``rate``; the depth of 3-D signals is never resampled."""
    axes: list[int | str] = []
    for axis in _AXES[spec.dims]:
        if axis == "D":
            axes.append(axis)
        elif image_size is None:
            axes.append(axis if rate == 1 else f"{axis}/{rate}")
        else:
            axes.append(image_size // rate)
    return tuple(axes)


def _after(site: Site) -> int:
    """The downsampling rate at the output of ``site``."""
    return {"downsample": site.ds * 2, "upsample": site.ds // 2}.get(site.kind, site.ds)


def _stage_shapes(model: nn.Module, spec: Spec, image_size: int | None) -> dict[str, Shape]:
    layout = model.layout
    batch: Shape = ("N",)
    embedding = batch + (model.maker.ctx.emb_channels,)
    shapes: dict[str, Shape] = {"time_embed": embedding, "label_emb": embedding}
    groups = {"input_blocks": layout.input_blocks, "middle_block": (layout.middle_block,)}
    if layout.output_blocks:
        groups["output_blocks"] = layout.output_blocks
    for name, sites in groups.items():
        last = sites[-1][-1]
        shapes[name] = batch + (last.out_channels,) + _spatial(spec, image_size, _after(last))
    head = () if spec.pool is not None else _spatial(spec, image_size, 1)
    shapes["out"] = batch + (spec.out_channels,) + head
    return shapes


def _block_name(module: nn.Module) -> str:
    """The registered name of the block ``module`` is (set by the builder)."""
    return getattr(module, "idmzoo_block", "?").rpartition(":")[2]


def _blocks_in(module: nn.Module, spec: Spec) -> tuple[tuple[str, str, int], ...]:
    counts = Counter(
        (m.idmzoo_kind, _block_name(m))
        for m in module.modules()
        if getattr(m, "idmzoo_kind", None) is not None
    )
    order = sorted(counts, key=lambda key: (key[0] in _NESTED, BLOCK_KINDS.index(key[0]), key[1]))
    return tuple((kind, name, counts[kind, name]) for kind, name in order)


def _label(kind: str, params: Any, spec: Spec) -> str:
    """``name``, or ``name(k=v, ...)`` with the parameters that differ from the top-level block."""
    base = getattr(spec, kind)
    name = params.type.rpartition(":")[2]
    fields = [field for field in type(params).model_fields if field != "type"]
    if params.type == base.type:
        changed = {f: getattr(params, f) for f in fields if getattr(params, f) != getattr(base, f)}
    else:
        model_fields = type(params).model_fields
        changed = {f: getattr(params, f) for f in fields if getattr(params, f) != model_fields[f].default}
    if not changed:
        return name
    return f"{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in changed.items())})"


def _places(model: nn.Module, spec: Spec) -> tuple[PlaceSummary, ...]:
    """The blocks at each (stage, level) of the layout, and the norms and activations inside them
    where an override changed those."""
    layout = model.layout
    head = getattr(layout, "head", None)
    sites = [site for site in layout.sites() if site.kind != "stem"] + ([head] if head is not None else [])
    own: dict[tuple[str, int], Counter[tuple[str, str]]] = {}
    nested: dict[tuple[str, int], Counter[tuple[str, str]]] = {}
    for site in sites:
        key = (site.stage, site.level)
        found, inside = own.setdefault(key, Counter()), nested.setdefault(key, Counter())
        if site.kind != "head":
            found[site.kind, _label(site.kind, spec.block_at(site.kind, site), spec)] += 1
        elif spec.pool is not None:
            found["pool", _label("pool", spec.pool, spec)] += 1
        for kind in _NESTED:
            params = spec.block_at(kind, site)
            if params != getattr(spec, kind):
                built = model.get_submodule(site.path).modules()
                count = sum(getattr(m, "idmzoo_kind", None) == kind for m in built)
                if count:
                    inside[kind, _label(kind, params, spec)] += count
    return tuple(
        PlaceSummary(
            stage,
            level,
            tuple((k, label, n) for (k, label), n in (*found.items(), *nested[stage, level].items())),
        )
        for (stage, level), found in own.items()
        if found or nested[stage, level]
    )


def _stage_position(named: tuple[str, nn.Module]) -> int:
    return _STAGE_ORDER.index(named[0]) if named[0] in _STAGE_ORDER else len(_STAGE_ORDER)


def count_flops(model: nn.Module, image_size: int) -> tuple[dict[str, int], int]:
    """Forward FLOPs of one input of side ``image_size``: per top-level child, and in total.

    Counted by :class:`~torch.utils.flop_counter.FlopCounterMode` on the meta device:
    parameters and buffers are replaced by meta tensors of the same shapes and dtypes for
    the call (``torch.func.functional_call``), so nothing is allocated or computed.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = model.spec
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    side = (image_size,) * spec.dims
    kwargs = {"timesteps": torch.zeros(1, device="meta")}
    if spec.num_classes is not None:
        kwargs["y"] = torch.zeros(1, dtype=torch.long, device="meta")
    if spec.family.type.endswith("superres_unet"):
        kwargs["low_res"] = torch.empty(1, spec.in_channels, *side, device="meta")
    x = torch.empty(1, spec.in_channels, *side, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        torch.func.functional_call(model, meta, (x,), kwargs)
    counts = {key: sum(per_op.values()) for key, per_op in counter.get_flop_counts().items()}
    root = type(model).__name__
    per_stage = {}
    for name, _ in model.named_children():
        prefix = f"{root}.{name}"
        if prefix in counts:
            per_stage[name] = counts[prefix]
        else:  # a ModuleList is never called: its members are
            per_stage[name] = sum(v for k, v in counts.items() if k.rpartition(".")[0] == prefix)
    return per_stage, counter.get_total_flops()


def summarize(model: nn.Module, *, image_size: int | None = None, flops: bool | None = None) -> ModelSummary:
    """Summarise a model built by :func:`idmzoo.build`, stage by stage.

    Args:
        model: the built model (any device, ``"meta"`` included).
        image_size: the input's side length, for numeric shapes; defaults to the spec's
            ``image_size``, and shapes stay symbolic (``H/4``) when neither is set.
        flops: count the forward FLOPs of each stage for one input (:func:`count_flops`).
            ``None`` (the default) counts them when ``image_size`` is given; they are
            never counted without a numeric size, nor for 3-D models (the depth is not known).

    Returns:
        The :class:`ModelSummary`; ``print()`` it for a table.

    Raises:
        IdmzooError: the model was not built by idmzoo, or ``image_size`` is not a
            multiple of the bottleneck's downsampling rate.

    Examples:
        >>> print(idmzoo.summarize(idmzoo.build("specs/idm_uncond_ssn.json", device="meta")))
    """
    spec, layout = getattr(model, "spec", None), getattr(model, "layout", None)
    if spec is None or layout is None or not hasattr(model, "maker"):
        raise IdmzooError(
            f"summarize needs a model built by idmzoo.build (an IdmzooModel with .spec and "
            f".layout), but got {type(model).__name__}"
        )
    if flops is None:
        flops = image_size is not None
    image_size = image_size if image_size is not None else spec.image_size
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise IdmzooError(f"image_size must be a positive integer, but got {image_size!r}")
    if image_size is not None and image_size % layout.final_ds:
        raise IdmzooError(
            f"image_size={image_size} must be a multiple of {layout.final_ds}, the "
            f"downsampling rate at the bottleneck"
        )
    shapes = _stage_shapes(model, spec, image_size)
    per_stage: dict[str, int] = {}
    total = None
    if flops and image_size is not None and spec.dims != 3:
        per_stage, total = count_flops(model, image_size)
    stages = tuple(
        StageSummary(
            name,
            _blocks_in(child, spec),
            shapes.get(name),
            sum(p.numel() for p in child.parameters()),
            per_stage.get(name) if total is not None else None,
        )
        for name, child in sorted(model.named_children(), key=_stage_position)
    )
    return ModelSummary(
        family=spec.family.type,
        input_shape=("N", spec.in_channels) + _spatial(spec, image_size, 1),
        stages=stages,
        parameters=sum(p.numel() for p in model.parameters()),
        flops=total,
        places=_places(model, spec),
    )
