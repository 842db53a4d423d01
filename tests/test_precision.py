"""Mixed precision as in the reference: a float16 torso with float32 norms, and bf16 autocast."""

from __future__ import annotations

import torch

import idmzoo
from idmzoo.blocks.norm import GroupNorm32
from tests.fixtures import TINY

SPEC = {**TINY, "dropout": 0.0, "num_classes": 4}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([3.0, 517.0]), torch.tensor([0, 3])


def test_use_fp16_keeps_convs_half_and_norms_float():
    model = randomised(idmzoo.build({**SPEC, "use_fp16": True}))
    torso = [model.input_blocks, model.middle_block, model.output_blocks]
    convs = [m for part in torso for m in part.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    norms = [m for m in model.modules() if isinstance(m, GroupNorm32)]
    assert convs and all(c.weight.dtype == torch.float16 for c in convs)
    assert norms and all(n.weight.dtype == torch.float32 for n in norms)
    assert model.out[2].weight.dtype == torch.float32  # the head stays float32, as in the reference


def test_fp16_torso_output_is_float32_and_close_to_fp32():
    x, t, y = inputs()
    reference = randomised(idmzoo.build(SPEC)).eval()
    half = randomised(idmzoo.build({**SPEC, "use_fp16": True})).eval()
    with torch.no_grad():
        expected, got = reference(x, t, y), half(x, t, y)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < 2e-2 * expected.abs().max()
    half.convert_to_fp32()
    with torch.no_grad():
        assert torch.allclose(half(x, t, y), expected, atol=1e-2)


def test_group_norm_computes_in_float32_for_half_inputs():
    norm = GroupNorm32(64, num_groups=32, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 64, 8, 8) * 300
    out = norm(x.half())
    assert out.dtype == torch.float16
    expected = torch.nn.functional.group_norm(x.half().float(), 32, norm.weight, norm.bias).half()
    assert torch.equal(out, expected)


def test_bf16_autocast_trains():
    x, t, y = inputs()
    model = randomised(idmzoo.build(SPEC))
    with torch.no_grad():
        expected = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() < 5e-2 * expected.abs().max()
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
