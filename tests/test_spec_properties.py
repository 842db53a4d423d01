"""Property tests over the spec space: idmzoo answers every spec with a working model or a clear error.

Every spec the validator accepts must build and run forward and backward with the right
output shape, whatever its dims, family and built-in blocks; every spec it rejects must be
rejected with a ``pydantic.ValidationError`` whose errors all name a spec field.  The
strategies draw small sizes so each example costs milliseconds; the ``ci`` Hypothesis
profile (``tests/conftest.py``) makes the examples the same on every run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import idmzoo
from idmzoo import Spec, list_blocks

#: The built-in blocks of each kind with strategies for their parameters.
_GROUPS = st.sampled_from([1, 2, 3, 4, 8, 32])
_HEAD_CHANNELS = st.sampled_from([1, 2, 4, 8])
_HEADS = st.integers(1, 4)
_ATTENTION_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "num_heads": _HEADS,
        "num_head_channels": st.none() | _HEAD_CHANNELS,
        "num_heads_upsample": st.none() | _HEADS,
    },
)
_HIDDEN = st.fixed_dictionaries({}, optional={"hidden_channels": st.sampled_from([3, 4, 8, 16])})
BUILTIN_BLOCKS: dict[str, dict[str, st.SearchStrategy[dict[str, Any]]]] = {
    "family": {"unet": st.just({}), "superres_unet": st.just({}), "encoder_unet": st.just({})},
    "norm": {
        "group_norm32": st.fixed_dictionaries(
            {"num_groups": _GROUPS}, optional={"eps": st.sampled_from([1e-5, 1e-6])}
        )
    },
    "resblock": {
        "resblock": st.fixed_dictionaries(
            {}, optional={"use_scale_shift_norm": st.booleans(), "skip_conv": st.booleans()}
        )
    },
    "attention": {
        "legacy_attention": _ATTENTION_PARAMS,
        "new_order_attention": _ATTENTION_PARAMS,
        "conv2d_attention": _ATTENTION_PARAMS,
    },
    "upsample": {name: st.just({}) for name in ("nearest_conv", "nearest", "resblock_up")},
    "downsample": {name: st.just({}) for name in ("strided_conv", "avg_pool", "resblock_down")},
    "activation": {
        "silu": st.just({}),
        "gelu": st.fixed_dictionaries({}, optional={"approximate": st.sampled_from(["none", "tanh"])}),
    },
    "time_embed": {
        "sinusoidal": st.fixed_dictionaries({}, optional={"max_period": st.sampled_from([10000.0, 100.0])}),
        "fourier": st.fixed_dictionaries({}, optional={"scale": st.sampled_from([1.0, 16.0])}),
    },
    "label_embed": {
        "embedding": st.just({}),
        "cfg_embedding": st.fixed_dictionaries({}, optional={"drop_rate": st.sampled_from([0.0, 0.5])}),
    },
    "pool": {
        "adaptive": st.just({}),
        "attention": st.fixed_dictionaries({"num_head_channels": _HEAD_CHANNELS}),
        "spatial": _HIDDEN,
        "spatial_v2": _HIDDEN,
    },
}


def rarely(draw: st.DrawFn) -> bool:
    """True for about one draw in eight: the rare branch of a choice (Hypothesis shrinks to 0)."""
    return draw(st.integers(0, 7)) == 5


@st.composite
def blocks(draw: st.DrawFn, kind: str, names: list[str] | None = None) -> dict[str, Any] | str:
    """A built-in block of ``kind``: ``{"type": name, ...params}``, or the bare-name shorthand."""
    name = draw(st.sampled_from(names or sorted(BUILTIN_BLOCKS[kind])))
    params = draw(BUILTIN_BLOCKS[kind][name])
    qualified = draw(st.sampled_from([name, f"idmzoo:{name}"]))
    if not params and draw(st.booleans()):
        return qualified
    return {"type": qualified, **params}


#: Module path patterns an override may select by (some match nothing in a small model).
_PATHS = st.sampled_from(
    ["input_blocks.1*", "output_blocks.*", "middle_block", "output_blocks.2", "*.1", "out"]
)
#: What an override may set for a kind without naming a block: a partial parameter object.
_PARTIAL: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "norm": st.fixed_dictionaries({"num_groups": st.sampled_from([1, 2, 4])}),
    "resblock": st.fixed_dictionaries({"use_scale_shift_norm": st.booleans()}),
    "attention": _ATTENTION_PARAMS.filter(bool),
}


@st.composite
def overrides(draw: st.DrawFn, levels: int, attention_levels: set[int]) -> dict[str, Any]:
    """One override entry: an ``at`` over levels, stages and paths, and one or two blocks.

    Mostly blocks that exist where ``at`` points (no upsampler on the encoder path, no
    attention at a level without it); now and then any kind, which validation must reject.
    """
    at: dict[str, Any] = {}
    while not at:
        if draw(st.booleans()):
            level = st.integers(0, levels if rarely(draw) else levels - 1)
            at["level"] = draw(level | st.lists(level, min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            at["stage"] = draw(st.sampled_from(["input", "middle", "output", "head"]))
        if rarely(draw):
            at["path"] = draw(_PATHS)
    chosen = at.get("level", list(range(levels)))
    chosen = {chosen} if isinstance(chosen, int) else set(chosen)
    stage = at.get("stage")
    kinds = ["norm", "activation"]
    if stage != "head":
        kinds.append("resblock")
        if stage == "middle" or chosen & attention_levels or (stage is None and levels - 1 in chosen):
            kinds.append("attention")
        if stage in (None, "output") and chosen - {0}:
            kinds.append("upsample")
        if stage in (None, "input") and chosen - {levels - 1}:
            kinds.append("downsample")
    if rarely(draw):
        kinds = ["norm", "activation", "resblock", "attention", "upsample", "downsample"]
    entry: dict[str, Any] = {"at": at}
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2, unique=True)):
        if kind in _PARTIAL and draw(st.booleans()):
            entry[kind] = draw(_PARTIAL[kind])
        elif kind == "norm":
            entry[kind] = {"type": "group_norm32", "num_groups": draw(st.sampled_from([1, 2, 4]))}
        else:
            entry[kind] = draw(blocks(kind))
    return entry


@dataclass(frozen=True)
class Case:
    """A spec as JSON data, and the input geometry to run it on if it is accepted."""

    spec: dict[str, Any]
    bottleneck_side: int
    depth: int


@st.composite
def cases(draw: st.DrawFn, family_name: str | None = None, dims: int | None = None) -> Case:
    """Small specs of a family and dims (any if not given) over every built-in block.

    Mostly valid: each choice that the validator may refuse (unreachable attention rates,
    norms whose groups do not divide, heads that do not divide, a pool on a U-Net, ...)
    takes its risky branch now and then, so both answers of the validator are exercised.
    """
    family = draw(blocks("family", [family_name] if family_name else None))
    encoder = (family if isinstance(family, str) else family["type"]).endswith("encoder_unet")
    levels = draw(st.integers(1, 3))
    rates = [2**level for level in range(levels + (1 if rarely(draw) else 0))]
    spec: dict[str, Any] = {
        "family": family,
        "in_channels": draw(st.integers(1, 3)),
        "model_channels": draw(st.sampled_from([4, 8, 12, 16, 6])),
        "out_channels": draw(st.integers(1, 4)),
        "num_res_blocks": draw(
            st.integers(1, 2) | st.lists(st.integers(1, 2), min_size=levels, max_size=levels + rarely(draw))
        ),
        "channel_mult": draw(
            st.lists(st.sampled_from([1, 2, 3, 0.5, 1.5]), min_size=levels, max_size=levels)
        ),
        "attention_resolutions": draw(st.lists(st.sampled_from(rates), max_size=3)),
        "dims": dims or draw(st.sampled_from([2, 1, 3])),
        "norm": {"type": "group_norm32", "num_groups": draw(st.sampled_from([1, 2, 4]))},
    }
    if rarely(draw):
        spec["norm"] = draw(blocks("norm"))
    optional = {
        "dropout": st.sampled_from([0.0, 0.25]),
        "num_classes": st.none() | st.integers(1, 4),
        "image_size": st.integers(1, 3).map(lambda side: side * rates[levels - 1])
        | st.sampled_from([4, 6, 12]),
        "use_fp16": st.booleans(),
        "resblock": blocks("resblock"),
        "attention": blocks("attention"),
        "upsample": blocks("upsample"),
        "downsample": blocks("downsample"),
        "activation": blocks("activation"),
        "time_embed": blocks("time_embed"),
    }
    for field, strategy in optional.items():
        if not rarely(draw):  # mostly set; sometimes left to the default
            spec[field] = draw(strategy)
    if draw(st.booleans()):
        attention_levels = {rates.index(rate) for rate in spec["attention_resolutions"]}
        spec["overrides"] = draw(st.lists(overrides(levels, attention_levels), min_size=1, max_size=2))
    if rarely(draw):
        del spec["norm"]  # the default: 32 groups
    if encoder and not rarely(draw):
        spec.pop("num_classes", None)
    if spec.get("num_classes") or rarely(draw):  # a label embedding needs classes
        spec["label_embed"] = draw(blocks("label_embed"))
    if encoder != rarely(draw):  # a pool for encoders, rarely for the others
        spec["pool"] = draw(blocks("pool"))
    return Case(spec, bottleneck_side=draw(st.sampled_from([1, 2, 3])), depth=draw(st.integers(1, 2)))


def assert_names_spec_fields(error: ValidationError, field: str | None = None) -> None:
    """Every error of ``error`` has a location starting with a spec field (``field`` if given)."""
    assert error.errors(), "a ValidationError without errors"
    for detail in error.errors():
        loc = detail["loc"]
        assert loc and loc[0] in Spec.model_fields, f"error without a spec field: {detail}"
        if field is not None:
            assert loc[0] == field, f"corrupting {field!r} reported {loc}: {detail['msg']}"
        assert detail["msg"], f"error without a message: {detail}"


def run_accepted(spec: Spec, case: Case) -> None:
    """Build ``spec`` (shape check on), run it forward and backward, check the output and gradients."""
    torch.manual_seed(0)
    model = idmzoo.build(spec, check_shapes=True)
    if spec.use_fp16:  # built in float16; run in float32, as CPUs lack float16 avg_pool3d
        model.convert_to_fp32()
    with torch.no_grad():  # move off the zero init so gradients actually flow everywhere
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    side = spec.image_size or case.bottleneck_side * 2 ** (len(spec.channel_mult) - 1)
    spatial = {1: (side,), 2: (side, side), 3: (case.depth, side, side)}[spec.dims]
    x = torch.randn(2, spec.in_channels, *spatial)
    args: list[Any] = [x, torch.tensor([0.0, 17.5])]
    family = spec.family.type.rpartition(":")[2]
    if family == "superres_unet":
        args.append(torch.randn(2, spec.in_channels, *(max(1, s // 2) for s in spatial)))
    kwargs = {"y": torch.tensor([0, spec.num_classes - 1])} if spec.num_classes else {}
    out = model(*args, **kwargs)
    expected = (2, spec.out_channels) if family == "encoder_unet" else (2, spec.out_channels, *spatial)
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP hand-offs, which dominate (and vary) on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_strategies_cover_every_builtin_block() -> None:
    builtin = {(info.kind, info.name) for info in list_blocks() if info.package == "idmzoo"}
    drawn = {(kind, name) for kind, names in BUILTIN_BLOCKS.items() for name in names}
    assert drawn == builtin


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("family", sorted(BUILTIN_BLOCKS["family"]))
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_spec_is_built_or_rejected_with_a_field(family: str, dims: int, data: st.DataObject) -> None:
    case = data.draw(cases(family, dims))
    note(json.dumps(case.spec))
    try:
        spec = Spec.model_validate(case.spec)
    except ValidationError as err:
        event(f"rejected: {err.errors()[0]['loc'][0]}")
        assert_names_spec_fields(err)
        return
    event(f"accepted: {spec.family.type.rpartition(':')[2]} dims={spec.dims}")
    if spec.overrides:
        event("accepted with overrides")
    run_accepted(spec, case)


@settings(max_examples=100)
@given(cases())
def test_accepted_specs_round_trip_through_json(case: Case) -> None:
    try:
        spec = Spec.model_validate(case.spec)
    except ValidationError:
        return
    assert Spec.model_validate_json(spec.model_dump_json()) == spec


# -- deliberately invalid values -----------------------------------------------------------

_NOT_AN_INT = st.sampled_from(["wide", None, [8], {"n": 1}, 1.5, math.inf, math.nan])
_BAD_BLOCK = st.sampled_from(
    [
        "no_such_block",
        "os.system",
        "os:system",
        "builtins.eval",
        {"type": 3},
        {"no_type": 1},
        [],
        7,
        {"type": "idmzoo:no_such_block"},
        {"type": "other_package:group_norm32"},
    ]
)
CORRUPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "family": _BAD_BLOCK | st.just({"type": "unet", "depth": 3}),
    "in_channels": st.sampled_from([0, -1]) | _NOT_AN_INT,
    "model_channels": st.sampled_from([0, -8]) | _NOT_AN_INT,
    "out_channels": st.sampled_from([0, -1]) | _NOT_AN_INT,
    "num_res_blocks": st.sampled_from([0, -2]) | _NOT_AN_INT,
    "attention_resolutions": st.sampled_from([[0], [-2], ["x"], "16", [1.5], 4]),
    "dropout": st.sampled_from([-0.1, 1.0, 2, "high", math.nan, math.inf]),
    "channel_mult": st.sampled_from([[], [0], [-1], [1, "x"], [math.inf], [math.nan], "1,2", 2]),
    "dims": st.sampled_from([0, 4, "2d", None, 2.5]),
    "num_classes": st.sampled_from([0, -1, "ten", 2.5]),
    "image_size": st.sampled_from([0, -32, "big", 2.5]),
    "use_fp16": st.sampled_from(["maybe", 2, [True]]),
    "norm": _BAD_BLOCK
    | st.sampled_from(
        [
            {"type": "group_norm32", "num_groups": 0},
            {"type": "group_norm32", "num_groups": "four"},
            {"type": "group_norm32", "eps": -1.0},
            {"type": "group_norm32", "groups": 4},
        ]
    ),
    "resblock": _BAD_BLOCK | st.just({"type": "resblock", "use_scale_shift_norm": "sometimes"}),
    "attention": _BAD_BLOCK
    | st.sampled_from(
        [
            {"type": "legacy_attention", "num_heads": 0},
            {"type": "new_order_attention", "num_head_channels": -4},
            {"type": "legacy_attention", "num_head": 2},
        ]
    ),
    "upsample": _BAD_BLOCK | st.just({"type": "nearest", "scale": 2}),
    "downsample": _BAD_BLOCK | st.sampled_from(["resblock_up", {"type": "avg_pool", "kernel": 3}]),
    "pool": _BAD_BLOCK | st.just({"type": "spatial", "hidden_channels": 0}),
    "activation": _BAD_BLOCK | st.just({"type": "gelu", "approximate": "fast"}),
    "time_embed": _BAD_BLOCK | st.just({"type": "fourier", "scale": 0}),
    "label_embed": _BAD_BLOCK | st.just({"type": "cfg_embedding", "drop_rate": 1.5}),
    # errors of the entries themselves (a wrong level or a partial the block rejects depend on
    # the rest of the spec, and are drawn by cases())
    "overrides": st.sampled_from(
        [
            "everywhere",
            [{"at": {}, "norm": "group_norm32"}],
            [{"norm": "group_norm32"}],
            [{"at": {"level": -1}, "norm": "group_norm32"}],
            [{"at": {"stage": "bottom"}, "norm": "group_norm32"}],
            [{"at": {"level": 0}, "pool": "adaptive"}],
            [{"at": {"level": 0}}],
            [{"at": {"level": 0}, "norm": {}}],
            [{"at": {"level": 0}, "norm": {"type": "no_such_norm"}}],
            [{"at": {"level": 0}, "attention": {"type": "legacy_attention", "num_heads": 0}}],
        ]
    ),
}


def test_corruptions_cover_every_spec_field() -> None:
    assert set(CORRUPTIONS) == set(Spec.model_fields)


@settings(max_examples=300)
@given(st.data())
def test_invalid_values_are_rejected_naming_their_field(data: st.DataObject) -> None:
    case = data.draw(cases())
    field = data.draw(st.sampled_from(sorted(CORRUPTIONS)))
    spec = {**case.spec, field: data.draw(CORRUPTIONS[field])}
    note(json.dumps(spec, default=repr))
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(spec)
    assert_names_spec_fields(caught.value, field)


@settings(max_examples=50)
@given(cases(), st.sampled_from(["colour", "typo_field", "__class__", "model_channels "]))
def test_unknown_top_level_keys_are_rejected_by_name(case: Case, key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({**case.spec, key: 1})
    assert [detail["loc"] for detail in caught.value.errors()] == [(key,)]


# -- numbers at the edges (issue 15) ---------------------------------------------------------

_EXTREME_INTS = st.sampled_from([2**31, 2**63, 10**9, 10**12, 10**400, -(10**400)]) | st.integers(
    -(2**70), 2**70
)
_EXTREME_FLOATS = st.sampled_from([1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 1e-300])
_EXTREME = _EXTREME_INTS | _EXTREME_FLOATS
EDGES: dict[str, st.SearchStrategy[Any]] = {
    "in_channels": _EXTREME,
    "model_channels": _EXTREME | st.just(1),
    "out_channels": _EXTREME,
    "num_res_blocks": _EXTREME,
    "num_classes": _EXTREME,
    "image_size": _EXTREME,
    "dropout": _EXTREME_FLOATS,
    "channel_mult": st.lists(_EXTREME, min_size=1, max_size=3).map(lambda m: [*m, 1])
    | st.just(list(range(1, 10**5))),
    "attention_resolutions": st.lists(_EXTREME_INTS, min_size=1, max_size=3) | st.just(list(range(1, 10**5))),
    "norm": _EXTREME_FLOATS.map(lambda eps: {"type": "group_norm32", "num_groups": 1, "eps": eps}),
}


@settings(max_examples=300)
@given(st.data())
def test_numbers_at_the_edges_are_one_bounded_error_at_their_field(data: st.DataObject) -> None:
    """Huge, tiny, infinite and NaN numbers: one short error at the field, or a spec within every limit.

    Nothing is laid out or built for an accepted spec here: acceptance must already imply
    the size limits (the estimate is arithmetic, so this costs microseconds per example).
    """
    case = data.draw(cases())
    field = data.draw(st.sampled_from(sorted(EDGES)))
    spec = {**case.spec, field: data.draw(EDGES[field])}
    note(json.dumps(spec, default=repr)[:2000])
    try:
        accepted = Spec.model_validate(spec)
    except ValidationError as err:
        assert_names_spec_fields(err)  # at this field, or one a changed level count affects
        mine = [e for e in err.errors() if e["loc"][0] == field]
        assert len(err.errors()) <= idmzoo.spec.MAX_ERRORS + 1
        assert len({e["loc"][:2] for e in mine}) == len(mine), "one error per place"
        assert len(str(err)) < 5000, f"{len(str(err)):,} characters of errors"
        return
    sizes = accepted.estimate_size()
    assert sizes.pop("blocks") <= idmzoo.spec.MAX_BLOCKS
    assert sum(sizes.values()) <= idmzoo.spec.MAX_PARAMETERS
    for value in (accepted.dropout, *accepted.channel_mult, getattr(accepted.norm, "eps", 0.0)):
        assert math.isfinite(value)
