"""Specs from reference kwargs build the reference's model: same keys, outputs and gradients."""

from __future__ import annotations

import pytest
import torch

import idmzoo
from idmzoo.errors import ReferenceConversionError
from idmzoo.reference import spec_from_reference
from tests.fixtures import consistency_index, fixture_index, load_fixture

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


@pytest.mark.parametrize("checkpointing", ["none", "attention", "all", "selective"])
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


# -- consistency-models: guided-diffusion's U-Net with Conv2d attention projections ------------

CM = "consistency-models"
CM_CASES = [case for case in consistency_index()["create_model_cases"] if "error" not in case]


@pytest.mark.parametrize("case", CM_CASES, ids=[case["name"] for case in CM_CASES])
def test_cm_flags_build_to_the_reference_parameter_count(case):
    from_flags = idmzoo.spec_from_flags(CM, case["flags"])
    assert from_flags == spec_from_reference(CM, case["class"], case["kwargs"])
    assert from_flags.attention.type == "conv2d_attention"
    model = idmzoo.build(from_flags, device="meta")
    assert sum(p.numel() for p in model.parameters()) == case["param_count"]


def _conv2d_projections(state_dict: dict) -> dict:
    """guided-diffusion's Conv1d ``qkv`` / ``proj_out`` weights as cm's 1x1 Conv2d weights."""
    attention = (".qkv.weight", ".proj_out.weight")
    return {k: v.unsqueeze(-1) if k.endswith(attention) else v for k, v in state_dict.items()}


def test_cm_layout_state_dict_loads_strictly_and_computes_guided_new_order_attention():
    guided = load_fixture("adm_neworder_rud")  # use_new_attention_order=True, 2-D
    cm_state = _conv2d_projections(guided["state_dict"])
    assert any(v.shape[-2:] == (1, 1) and k.endswith(".qkv.weight") for k, v in cm_state.items())
    model = idmzoo.build(spec_from_reference(CM, "UNetModel", guided["kwargs"])).eval()
    model.load_state_dict(cm_state, strict=True)
    for attention in ("sdpa", "math"):
        with torch.no_grad(), idmzoo.attention_backend(attention):
            assert max_abs(model(**guided["inputs"]), guided["output"]) < OUTPUT_TOLERANCE
    with pytest.raises(RuntimeError, match=r"size mismatch for middle_block\.1\.qkv\.weight"):
        model.load_state_dict(guided["state_dict"], strict=True)  # Conv1d layout: refused


def test_cm_ignores_use_new_attention_order_and_needs_dims_2():
    kwargs = load_fixture("cm_neworder_flag_ignored")["kwargs"]
    assert kwargs["use_new_attention_order"] is True
    assert spec_from_reference(CM, "UNetModel", kwargs) == spec_from_reference(
        CM, "UNetModel", {**kwargs, "use_new_attention_order": False}
    )
    with pytest.raises(ReferenceConversionError, match=r"dims=1: .*only runs with dims=2"):
        spec_from_reference(CM, "UNetModel", {**kwargs, "dims": 1})
