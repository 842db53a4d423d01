"""Every timm norm as an idmzoo norm block: registered, timm's own result, any signal rank."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from idmzoo_timm.norms import timm_norm_names
from pydantic import ValidationError
from timm.layers import get_norm_layer

import idmzoo

ROOT = Path(__file__).resolve().parents[3]
NAMES = timm_norm_names()
SMALL_SPEC = ROOT / "specs" / "idm_uncond_ssn.json"
# How timm lays out each layer's input, written down here independently of the plugin: the
# layer-/RMS-/simple-norms without "2d" normalise the last axis; the rest take [N, C, ...].
CHANNELS_LAST = {n for n in NAMES if n.startswith(("layernorm", "rmsnorm", "simplenorm")) and "2d" not in n}


def norm_block(name: str, channels: int = 64, **params) -> torch.nn.Module:
    info = idmzoo.get_block("norm", f"timm_{name}")
    block = info.create(info.params(**params), channels)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for tensor in (*block.parameters(), *(b for b in block.buffers() if b.is_floating_point())):
            tensor.uniform_(0.5, 1.5)
    return block


def spec_with_norm(norm: dict, **fields) -> idmzoo.Spec:
    return idmzoo.Spec.model_validate({**idmzoo.load_spec(SMALL_SPEC).model_dump(), "norm": norm, **fields})


def test_every_timm_norm_name_is_a_registered_block_of_idmzoo_timm():
    blocks = idmzoo.list_blocks("norm", "timm_*")
    assert sorted(info.name for info in blocks) == sorted(f"timm_{name}" for name in NAMES)
    assert {info.package for info in blocks} == {"idmzoo-timm"}
    assert {"timm_groupnorm", "timm_layernorm2d", "timm_rmsnorm2d", "timm_layernorm"} <= {
        i.name for i in blocks
    }


def test_blocks_are_found_through_the_entry_point_without_importing_the_plugin():
    code = "import idmzoo; print(idmzoo.get_block('norm', 'timm_rmsnorm2d').package)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "idmzoo-timm"


@pytest.mark.parametrize("name", NAMES)
def test_norm_gives_timm_result_on_nchw_in_timms_own_layout(name):
    block = norm_block(name)
    native = get_norm_layer(name)(64)
    native.load_state_dict(block.state_dict())
    x = torch.randn(2, 64, 5, 6)
    if name in CHANNELS_LAST:
        expected = native(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    elif name == "batchnorm1d":
        expected = native(x.reshape(2, 64, -1)).reshape(x.shape)
    else:
        expected = native(x)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 64, 30), (2, 64, 2, 3, 5)], ids=["1d-or-attention", "3d"])
def test_norm_works_on_every_signal_rank_as_on_the_flattened_image(name, shape):
    block = norm_block(name)
    x = torch.randn(shape)
    out = block(x)
    assert out.shape == x.shape
    image = x.reshape(2, 64, 6, -1)  # the same values as a [N, C, H, W] image
    torch.testing.assert_close(out, block(image).reshape(shape))


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_input_is_normalised_in_float32_and_returned_in_half(name):
    block = norm_block(name)
    x = torch.randn(2, 64, 4, 4)
    out = block(x.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), block(x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", NAMES)
def test_every_timm_norm_builds_and_runs_a_unet_with_attention(name):
    model = idmzoo.build(spec_with_norm({"type": f"timm_{name}"}))
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([3.0, 517.0]))
    assert out.shape == (2, 6, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("name", ["layernorm", "rmsnorm2d", "groupnorm"])
def test_norms_run_in_1d_and_3d_models(name, dims):
    model = idmzoo.build(spec_with_norm({"type": f"timm_{name}"}, dims=dims))
    x = torch.randn(1, 3, *([8] * dims))
    out = model(x, torch.tensor([10.0]))
    assert out.shape == (1, 6, *([8] * dims)) and torch.isfinite(out).all()


def test_timm_groupnorm_loads_the_reference_checkpoint_and_reproduces_its_output():
    fixture = torch.load(ROOT / "tests/fixtures/reference/idm_uncond_ssn.pt", weights_only=True)
    reference = idmzoo.spec_from_reference(fixture["library"], fixture["class"], fixture["kwargs"])
    spec = idmzoo.Spec.model_validate(
        {**reference.model_dump(), "norm": {"type": "timm_groupnorm", "eps": 1e-5}}
    )
    model = idmzoo.load_checkpoint(spec, ROOT / "tests/fixtures/reference/idm_uncond_ssn.pt")
    with torch.no_grad():
        out = model.eval()(**fixture["inputs"])
    torch.testing.assert_close(out, fixture["output"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("norm", "location", "message"),
    [
        ({"type": "timm_groupnorm", "num_groups": 7}, "norm.num_groups", "num_groups=7 does not divide 32"),
        ({"type": "timm_layernorm2d", "eps": 0}, "norm.eps", "greater than 0"),
        ({"type": "timm_layernorm", "num_groups": 4}, "norm.num_groups", "Extra inputs are not permitted"),
        ({"type": "timm_batchnorm2d", "momentum": 2.0}, "norm.momentum", "less than or equal to 1"),
        ({"type": "timm_layernrom2d"}, "norm.type", "Did you mean 'timm_layernorm2d'"),
    ],
)
def test_invalid_norm_parameters_fail_naming_the_field(norm, location, message):
    with pytest.raises(ValidationError) as info:
        spec_with_norm(norm)
    errors = {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}
    assert location in errors and message in errors[location], errors
