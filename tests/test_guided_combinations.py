"""Every guided-diffusion block combination builds and trains, in 1, 2 and 3 dimensions."""

from __future__ import annotations

import itertools

import pytest
import torch

import idmzoo
from idmzoo.reference import spec_from_reference

SHAPES = {1: (2, 3, 16), 2: (2, 3, 16, 16), 3: (2, 3, 3, 16, 16)}
COMBINATIONS = list(itertools.product([False, True], [False, True], [False, True], [1, 2, 3]))


@pytest.mark.parametrize(
    ("new_attention_order", "resblock_updown", "conv_resample", "dims"),
    COMBINATIONS,
    ids=[f"new_order={a}-updown={u}-conv_resample={c}-{d}d" for a, u, c, d in COMBINATIONS],
)
def test_combination_trains(new_attention_order, resblock_updown, conv_resample, dims):
    spec = spec_from_reference(
        "guided-diffusion",
        "UNetModel",
        dict(
            image_size=16,
            in_channels=3,
            model_channels=32,
            out_channels=3,
            num_res_blocks=1,
            attention_resolutions=[2, 4],
            channel_mult=(1, 1, 2),
            dims=dims,
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            use_new_attention_order=new_attention_order,
        ),
    )
    model = idmzoo.build(spec)
    for parameter in model.parameters():  # leave the zero-initialised convs so every gradient is non-zero
        torch.nn.init.normal_(parameter, std=0.05)
    x = torch.randn(SHAPES[dims], requires_grad=True)
    out = model(x, torch.tensor([1.0, 500.0]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
