"""timm_act_resblock: idmzoo's residual block with a timm activation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from idmzoo_timm.activations import TIMM_ACTIVATIONS, TimmActResBlock
from pydantic import ValidationError
from timm.layers import get_act_layer

import idmzoo
from idmzoo import ResBlock

SMALL_SPEC = Path(__file__).resolve().parents[3] / "specs" / "idm_uncond_ssn.json"


def spec_with_resblock(resblock: dict, **fields) -> idmzoo.Spec:
    base = idmzoo.load_spec(SMALL_SPEC).model_dump()
    return idmzoo.Spec.model_validate({**base, "resblock": resblock, **fields})


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1, generator=generator)
    return model


def run(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x, torch.tensor([3.0, 517.0]))


def test_silu_is_exactly_the_core_resblock_with_the_same_keys():
    core = randomized(idmzoo.build(SMALL_SPEC))
    spec = spec_with_resblock({"type": "timm_act_resblock", "act": "silu", "use_scale_shift_norm": True})
    timm_act = idmzoo.build(spec)
    timm_act.load_state_dict(core.state_dict())  # strict: the same keys and shapes
    assert torch.equal(run(timm_act), run(core))


@pytest.mark.parametrize("updown", [False, True], ids=["conv-resample", "resblock-updown"])
def test_every_residual_block_uses_the_chosen_activation(updown):
    fields = {"upsample": {"type": "resblock_up"}, "downsample": {"type": "resblock_down"}} if updown else {}
    model = randomized(
        idmzoo.build(spec_with_resblock({"type": "timm_act_resblock", "act": "gelu"}, **fields))
    )
    resblocks = [m for m in model.modules() if isinstance(m, ResBlock)]  # resblock_up/down too
    assert resblocks and all(isinstance(block, TimmActResBlock) for block in resblocks)
    gelu = get_act_layer("gelu")
    for block in resblocks:
        acts = [block.in_layers[1], block.emb_layers[0], block.out_layers[1]]
        assert all(isinstance(act, gelu) for act in acts)
        assert not any(isinstance(m, torch.nn.SiLU) for m in block.modules())
    silu = idmzoo.build(spec_with_resblock({"type": "resblock"}, **fields))
    silu.load_state_dict(model.state_dict())
    assert not torch.allclose(run(model), run(silu))


def test_parametric_activation_adds_its_weights():
    model = idmzoo.build(spec_with_resblock({"type": "timm_act_resblock", "act": "prelu"}))
    assert "input_blocks.1.0.in_layers.1.weight" in model.state_dict()
    assert torch.isfinite(run(model)).all()


def test_unknown_activation_fails_naming_the_field_and_the_valid_names():
    assert {"silu", "gelu", "mish", "relu"} <= set(TIMM_ACTIVATIONS)
    with pytest.raises(ValidationError, match=r"resblock\.act[\s\S]*'gelu'"):
        spec_with_resblock({"type": "timm_act_resblock", "act": "gleu"})
