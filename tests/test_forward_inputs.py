"""Forward inputs the model cannot take are refused with an InputError naming the argument.

Before these checks, each case failed deep inside torch (GroupNorm, ``torch.cat``,
``F.interpolate``, ``nn.Embedding``'s IndexError) with no word about which argument was wrong.
"""

from __future__ import annotations

import pytest
import torch

import idmzoo
from idmzoo import InputError

BASE = {"in_channels": 3, "model_channels": 8, "out_channels": 3, "num_res_blocks": 1, "channel_mult": [1, 2]}
BASE["norm"] = {"type": "group_norm32", "num_groups": 4}


@pytest.fixture(scope="module")
def cond():
    return idmzoo.build({**BASE, "num_classes": 4}, seed=0).eval()


@pytest.fixture(scope="module")
def superres():
    return idmzoo.build({**BASE, "family": "superres_unet"}, seed=0).eval()


def x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


T2 = torch.tensor([1.0, 500.0])


@pytest.mark.parametrize(
    "args, message",
    [
        ((x(2, 4, 8, 8), T2, torch.tensor([0, 1])), r"x has 4 channels, but the model takes 3"),
        ((x(2, 3, 8), T2, torch.tensor([0, 1])), r"x must be \[N, 3, H, W\] for a 2-D model"),
        ((x(2, 3, 7, 8), T2, torch.tensor([0, 1])), r"spatial size \[7, 8\].*multiple of 2"),
        ((x(2, 3, 8, 8), torch.tensor(3.0), torch.tensor([0, 1])), r"timesteps must have shape \[2\]"),
        ((x(2, 3, 8, 8), torch.ones(2, 1), torch.tensor([0, 1])), r"timesteps must have shape \[2\]"),
        ((x(2, 3, 8, 8), torch.ones(3), torch.tensor([0, 1])), r"timesteps must have shape \[2\]"),
        ((x(2, 3, 8, 8), T2, torch.tensor([0, 4])), r"labels y must be in \[0, 3\] .*got \[4\]"),
        ((x(2, 3, 8, 8), T2, torch.tensor([-1, 0])), r"labels y must be in \[0, 3\] .*got \[-1\]"),
        ((x(2, 3, 8, 8), T2, torch.tensor([0.0, 1.0])), r"labels y must be integers"),
        ((x(2, 3, 8, 8), T2, torch.tensor([0])), r"needs labels y of shape \[2\]"),
    ],
)
def test_bad_inputs_name_the_argument(cond, args, message):
    with pytest.raises(InputError, match=message):
        cond(*args)


def test_one_timestep_is_broadcast_as_in_the_reference(cond):
    """improved-diffusion's ``timesteps[:, None]`` embedding broadcasts a [1] timestep over the batch."""
    y = torch.tensor([0, 3])
    with torch.no_grad():
        one = cond(x(2, 3, 8, 8).fill_(0.5), torch.tensor([7.0]), y)
        both = cond(x(2, 3, 8, 8).fill_(0.5), torch.tensor([7.0, 7.0]), y)
    torch.testing.assert_close(one, both)


@pytest.mark.parametrize(
    "low_res, message",
    [
        (x(2, 3, 4), r"low_res must be \[2, 3, <spatial>\] with 2 spatial axes"),
        (x(2, 1, 4, 4), r"low_res must be \[2, 3, <spatial>\]"),
        (x(1, 3, 4, 4), r"low_res must be \[2, 3, <spatial>\]"),
    ],
)
def test_superres_low_res_is_checked(superres, low_res, message):
    with pytest.raises(InputError, match=message):
        superres(x(2, 3, 8, 8), T2, low_res)


def test_input_errors_are_value_errors_and_exported():
    assert issubclass(InputError, ValueError) and issubclass(InputError, idmzoo.IdmzooError)


def test_label_range_is_skipped_under_compile_and_shape_checks_still_trace(cond):
    """fullgraph compile keeps working: the value check is skipped while tracing, shape checks raise."""
    torch._dynamo.reset()
    compiled = torch.compile(cond, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = compiled(x(2, 3, 8, 8), T2, torch.tensor([0, 3]))
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(Exception, match="x has 4 channels"):
        compiled(x(2, 4, 8, 8), T2, torch.tensor([0, 3]))
