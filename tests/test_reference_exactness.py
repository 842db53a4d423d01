"""Specs from reference kwargs build the reference's model: same keys, outputs and gradients."""

from __future__ import annotations

import pytest
import torch

import idmzoo
from idmzoo.reference import spec_from_reference
from tests.fixtures import fixture_index, load_fixture

OUTPUT_TOLERANCE = 1e-4
INPUT_GRAD_TOLERANCE = 1e-4
PARAM_GRAD_TOLERANCE = 1e-3

FIXTURE_NAMES = sorted(fixture_index())


def build_from_fixture(fixture: dict, **build_options) -> torch.nn.Module:
    spec = spec_from_reference(fixture["library"], fixture["class"], fixture["kwargs"])
    model = idmzoo.build(spec, **build_options)
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fixture(request) -> dict:
    return load_fixture(request.param)


def test_state_dict_has_exactly_the_reference_keys_and_shapes(fixture):
    model = build_from_fixture(fixture)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == fixture["param_count"]


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_eval_output_matches_reference(fixture, attention):
    model = build_from_fixture(fixture).eval()
    with torch.no_grad(), idmzoo.attention_backend(attention):
        output = model(**fixture["inputs"])
    assert output.shape == fixture["output"].shape
    assert max_abs(output, fixture["output"]) < OUTPUT_TOLERANCE


@pytest.mark.parametrize("checkpointing", ["none", "attention", "all"])
def test_train_gradients_match_reference(fixture, checkpointing):
    model = build_from_fixture(fixture, checkpointing=checkpointing).train()
    inputs = {name: value.clone() for name, value in fixture["inputs"].items()}
    differentiated = {"x": "input_grad", "low_res": "low_res_grad"}
    differentiated = {name: key for name, key in differentiated.items() if key in fixture}
    for name in differentiated:
        inputs[name].requires_grad_(True)
    output = model(**inputs)
    (output * fixture["cotangent"]).sum().backward()
    for name, key in differentiated.items():
        assert max_abs(inputs[name].grad, fixture[key]) < INPUT_GRAD_TOLERANCE, name
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert max_abs(parameter.grad, fixture["param_grads"][name]) < PARAM_GRAD_TOLERANCE, name
