"""The conv_transpose upsampler: found through its entry point, doubles H and W, trains in a U-Net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from idmzoo_convtranspose import conv_transpose_upsample

import idmzoo

SPEC = {
    "in_channels": 3,
    "model_channels": 16,
    "out_channels": 3,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "attention_resolutions": [2],
    "norm": {"type": "group_norm32", "num_groups": 8},
    "upsample": {"type": "conv_transpose"},
}
#: Input shapes per dims; for 3-D the first spatial axis is depth and must not change.
SHAPES = {1: (2, 3, 16), 2: (2, 3, 8, 12), 3: (2, 3, 3, 8, 12)}
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def context(dims: int) -> idmzoo.BlockContext:
    return idmzoo.build({**SPEC, "dims": dims}, device="meta").maker.ctx


def test_registered_through_its_entry_point():
    info = idmzoo.get_block("upsample", "conv_transpose")
    assert info.package == "idmzoo-convtranspose"
    assert idmzoo.get_block("upsample", "idmzoo-convtranspose:conv_transpose") is info
    assert info.factory is conv_transpose_upsample


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_doubles_the_resampled_axes_and_keeps_depth(dims):
    x = torch.randn(SHAPES[dims])
    up = conv_transpose_upsample(3, context(dims), init="default")
    expected = (
        *x.shape[:2],
        *(n if dims == 3 and axis == 0 else 2 * n for axis, n in enumerate(x.shape[2:])),
    )
    assert up(x).shape == expected


def test_3d_kernel_stride_padding_leave_depth_alone():
    up = conv_transpose_upsample(3, context(3), init="default")
    assert (up.kernel_size, up.stride, up.padding) == ((1, 4, 4), (1, 2, 2), (0, 1, 1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_bilinear_init_matches_interpolate_away_from_the_border(dims):
    x = torch.randn(SHAPES[dims])
    up = conv_transpose_upsample(3, context(dims), init="bilinear")
    scale = (1.0, 2.0, 2.0) if dims == 3 else (2.0,) * dims
    reference = F.interpolate(x, scale_factor=scale, mode=_INTERPOLATION[dims], align_corners=False)
    interior = (slice(None), slice(None), *(slice(None) if s == 1 else slice(1, -1) for s in scale))
    torch.testing.assert_close(up(x)[interior], reference[interior])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unet_with_conv_transpose_trains(dims):
    model = idmzoo.build({**SPEC, "dims": dims})
    with torch.no_grad():  # zero-initialised branches and output conv would block every gradient
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    uppers = [m for m in model.modules() if getattr(m, "idmzoo_kind", None) == "upsample"]
    assert uppers and all(isinstance(m, torch.nn.modules.conv._ConvTransposeNd) for m in uppers)
    x = torch.randn(SHAPES[dims])
    out = model(x, torch.tensor([10.0, 500.0]))
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for m in uppers for p in m.parameters())


def test_builds_on_the_meta_device():
    model = idmzoo.build({**SPEC, "upsample": {"type": "conv_transpose", "init": "bilinear"}}, device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_unknown_init_names_the_field():
    with pytest.raises(ValueError, match=r"upsample\.init"):
        idmzoo.load_spec({**SPEC, "upsample": {"type": "conv_transpose", "init": "nearest"}})
