"""``idmzoo.summarize``: stage shapes agree with a real forward pass, counts with the reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import idmzoo
from idmzoo import IdmzooError
from tests.cli_runner import run_idmzoo
from tests.fixtures import FIXTURES, TINY, TINY_ADM

SPECS = Path(__file__).parent.parent / "specs"
PRESETS = json.loads((FIXTURES / "reference" / "presets.json").read_text())["presets"]


def stage_shapes_of_a_forward(model: torch.nn.Module, size: int) -> dict[str, tuple[int, ...]]:
    """The output shape of every top-level child of ``model``, from hooks on a real forward."""
    spec, shapes = model.spec, {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes[name] = tuple(output.shape)

        return hook

    hooks = [  # a ModuleList is never called: its last block's output is the stage's
        (child[-1] if isinstance(child, torch.nn.ModuleList) else child).register_forward_hook(record(name))
        for name, child in model.named_children()
    ]
    depth = (3,) if spec.dims == 3 else ()
    x = torch.randn(2, spec.in_channels, *depth, *(size,) * min(spec.dims, 2))
    kwargs = {}
    if spec.num_classes:
        kwargs["y"] = torch.tensor([0, 1])
    if spec.family.type == "superres_unet":
        kwargs["low_res"] = torch.randn(2, spec.in_channels, *(s // 2 for s in x.shape[2:]))
    with torch.no_grad():
        model(x, torch.tensor([1.0, 2.0]), **kwargs)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize(
    "name",
    ["idm_uncond_ssn", "idm_classcond_add", "idm_superres", "adm_1d", "adm_3d_rud", "adm_encoder_spatial_v2"],
)
def test_stage_shapes_match_a_real_forward(name):
    model = idmzoo.build(SPECS / f"{name}.json")
    size = model.spec.image_size or 16
    summary = idmzoo.summarize(model, image_size=size)
    observed = stage_shapes_of_a_forward(model, size)
    depth = 3 if model.spec.dims == 3 else None
    for stage in summary.stages:
        expected = tuple(depth if d == "D" else d for d in stage.output_shape[1:])
        assert observed[stage.name][1:] == expected, stage.name


def at_size(axis: int | str, size: int) -> int | str:
    """``H/4`` → ``size // 4``, ``W`` → ``size``; batch and channels unchanged."""
    if isinstance(axis, str) and axis[0] in "HW":
        return size // int(axis.partition("/")[2] or 1)
    return axis


def test_symbolic_shapes_become_the_numeric_ones_for_a_given_size():
    model = idmzoo.build(SPECS / "idm_uncond_ssn.json", device="meta")
    symbolic, numeric = idmzoo.summarize(model), idmzoo.summarize(model, image_size=64)
    for sym, num in zip(symbolic.stages, numeric.stages, strict=True):
        assert tuple(at_size(axis, 64) for axis in sym.output_shape) == num.output_shape
    assert re.search(r"^output_blocks\s+\[N, 32, H, W\]", str(symbolic), re.MULTILINE)


@pytest.mark.parametrize("preset", PRESETS, ids=[p["name"] for p in PRESETS])
def test_parameter_counts_match_the_reference(preset):
    model = idmzoo.build(SPECS / f"{preset['name']}.json", device="meta")
    summary = idmzoo.summarize(model)
    assert summary.parameters == preset["param_count"]
    assert sum(stage.parameters for stage in summary.stages) == preset["param_count"]


def test_blocks_used_are_counted_per_stage():
    spec = {**json.loads((SPECS / "idm_uncond_ssn.json").read_text()), "upsample": {"type": "conv_transpose"}}
    model = idmzoo.build(spec, device="meta")
    stages = {
        stage.name: dict(((k, n), c) for k, n, c in stage.blocks) for stage in idmzoo.summarize(model).stages
    }
    upsample_sites = sum(site.kind == "upsample" for group in model.layout.output_blocks for site in group)
    assert stages["output_blocks"][("upsample", "conv_transpose")] == upsample_sites
    group_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert sum(blocks.get(("norm", "group_norm32"), 0) for blocks in stages.values()) == group_norms
    assert stages["time_embed"] == {("time_embed", "sinusoidal"): 1, ("activation", "silu"): 1}


def test_image_size_must_reach_the_bottleneck_evenly():
    model = idmzoo.build(SPECS / "idm_uncond_ssn.json", device="meta")
    with pytest.raises(IdmzooError, match="image_size=30 must be a multiple of 4"):
        idmzoo.summarize(model, image_size=30)


def test_only_models_built_by_idmzoo_can_be_summarised():
    with pytest.raises(IdmzooError, match="summarize needs a model built by idmzoo.build.*got Linear"):
        idmzoo.summarize(torch.nn.Linear(2, 2))


# -- FLOPs ---------------------------------------------------------------------------------


def real_forward_flops(model: torch.nn.Module, size: int) -> tuple[int, dict[str, int]]:
    """FlopCounterMode over a real CPU forward of one input: the total and each module's count.

    With the reference's einsum attention: the counter has no formula for SDPA's CPU flash
    kernel, so a CPU SDPA forward would count no attention at all (on the meta device SDPA
    runs its math path, whose matmuls are the einsums').
    """
    from torch.utils.flop_counter import FlopCounterMode

    spec = model.spec
    kwargs = {"y": torch.tensor([1])} if spec.num_classes else {}
    if spec.family.type == "superres_unet":
        kwargs["low_res"] = torch.randn(1, spec.in_channels, size // 2, size // 2)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), idmzoo.attention_backend("math"):
        model(torch.randn(1, spec.in_channels, *(size,) * spec.dims), torch.tensor([5.0]), **kwargs)
    counts = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), counts


@pytest.mark.parametrize("spec", [TINY, TINY_ADM, "idm_superres"], ids=["idm", "adm", "superres"])
def test_flops_counted_on_meta_match_a_real_forward(spec):
    model = idmzoo.build(SPECS / f"{spec}.json" if isinstance(spec, str) else spec)
    size = model.spec.image_size or 8
    summary = idmzoo.summarize(model, image_size=size)
    total, counts = real_forward_flops(model, size)
    assert summary.flops == total > 0
    assert sum(stage.flops for stage in summary.stages) == total
    stages = {stage.name: stage.flops for stage in summary.stages}
    for name in ("middle_block", "out", "time_embed"):  # called directly: the counter names them
        assert stages[name] == counts.get(f"{type(model).__name__}.{name}", 0), name


def test_flops_are_counted_only_for_a_given_image_size():
    model = idmzoo.build(SPECS / "idm_uncond_ssn.json", device="meta")
    assert idmzoo.summarize(model).flops is None
    assert "GFLOPs" not in str(idmzoo.summarize(model))
    counted = idmzoo.summarize(model, image_size=32)
    assert counted.flops > 0 and all(stage.flops is not None for stage in counted.stages)
    assert idmzoo.summarize(model, image_size=32, flops=False).flops is None
    assert counted.to_dict()["flops"] == counted.flops


def test_build_command_prints_flops_per_stage():
    result = run_idmzoo(
        "build", SPECS / "adm_imagenet256_cond.json", "--device", "meta", "--image-size", "256"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("stage"))
    assert "GFLOPs/image" in header
    model = idmzoo.build(SPECS / "adm_imagenet256_cond.json", device="meta")
    for name in [name for name, _ in model.named_children()] + ["total"]:
        row = next(line for line in lines if line.split()[0] == name)
        assert re.search(r"\s\d[\d,]*\.\d{3}\s", row + " "), row
    total = next(line for line in lines if line.startswith("total"))
    assert float(total.split()[2].replace(",", "")) > 1000  # ADM 256x256: about 2.2 TFLOPs per image
