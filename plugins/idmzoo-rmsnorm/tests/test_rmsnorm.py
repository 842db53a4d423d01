"""The rms_norm block: found through its entry point, matches torch's RMSNorm, trains in a U-Net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from idmzoo_rmsnorm import ChannelRMSNorm
from pydantic import ValidationError

import idmzoo

SPEC = {
    "in_channels": 3,
    "model_channels": 16,
    "out_channels": 6,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "attention_resolutions": [2],
    "norm": {"type": "rms_norm", "num_groups": 4},
    "attention": {"type": "new_order_attention", "num_head_channels": 8},
    "resblock": {"type": "resblock", "use_scale_shift_norm": True},
}


def reference_rms_norm(x: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    """torch's own RMSNorm over each group of channels, with the channel axis moved last."""
    n, c, *spatial = x.shape
    groups = x.reshape(n, num_groups, c // num_groups, *spatial).movedim(2, -1)
    return F.rms_norm(groups, (c // num_groups,), eps=eps).movedim(-1, 2).reshape(x.shape)


def test_registered_through_its_entry_point():
    info = idmzoo.get_block("norm", "rms_norm")
    assert info.package == "idmzoo-rmsnorm"
    assert info.factory is ChannelRMSNorm
    assert idmzoo.get_block("norm", "idmzoo-rmsnorm:rms_norm") is info


@pytest.mark.parametrize("shape", [(2, 8), (2, 8, 5), (2, 8, 4, 6), (2, 8, 2, 3, 4)])
@pytest.mark.parametrize("num_groups", [1, 2, 8])
def test_matches_torch_rms_norm_per_group(shape, num_groups):
    x = torch.randn(shape) * 3 + 1
    norm = ChannelRMSNorm(8, num_groups=num_groups, eps=1e-6, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    expected = reference_rms_norm(x, num_groups, 1e-6) * norm.weight.reshape(8, *([1] * (x.dim() - 2)))
    torch.testing.assert_close(norm(x), expected)


def test_float16_statistics_do_not_overflow():
    x = torch.full((1, 4, 2, 2), 300.0)  # 300**2 overflows float16
    out = ChannelRMSNorm(4, num_groups=1, eps=1e-6, affine=True)(x.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(
        out.float(), ChannelRMSNorm(4, num_groups=1, eps=1e-6, affine=True)(x), rtol=1e-3, atol=1e-3
    )


def test_groups_that_do_not_divide_a_channel_count_fail_validation_by_name():
    with pytest.raises(ValidationError, match=r"norm\.num_groups[\s\S]*num_groups=3 does not divide 16"):
        idmzoo.load_spec({**SPEC, "norm": {"type": "rms_norm", "num_groups": 3}})


def test_unet_with_rms_norm_forward_and_backward():
    model = idmzoo.build(SPEC)
    norms = [m for m in model.modules() if getattr(m, "idmzoo_kind", None) == "norm"]
    assert norms and all(isinstance(m, ChannelRMSNorm) for m in norms)
    with torch.no_grad():  # zero-initialised branches and output conv would block every gradient
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.tensor([3.0, 900.0]))
    assert out.shape == (2, 6, 8, 8) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert all(norm.weight.grad.abs().sum() > 0 for norm in norms)


def test_unet_with_rms_norm_runs_in_float16_torso():
    model = idmzoo.build({**SPEC, "use_fp16": True})
    out = model(torch.randn(1, 3, 8, 8), torch.tensor([5.0]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
