"""convert and identify: reference checkpoints into self-describing files, and which model a checkpoint fits."""

from __future__ import annotations

import pytest
import torch

import idmzoo
import idmzoo.identification
from idmzoo.identification import match_zoo, spec_from_shapes, zoo_shapes
from idmzoo.reference import spec_from_reference
from tests.cli_runner import run_idmzoo
from tests.fixtures import fixture_index, load_fixture

SSN = "idm_uncond_ssn"
SSN_SPEC = "specs/idm_uncond_ssn.json"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[dict, str]:
    """The zoo's shape maps, computed once into a throwaway cache that the subprocesses share."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IDMZOO_CACHE", str(cache))
        zoo_shapes.cache_clear()
        shapes = zoo_shapes()
    zoo_shapes.cache_clear()
    return shapes, str(cache)


@pytest.fixture
def ssn_checkpoint(tmp_path):
    fixture = load_fixture(SSN)
    path = tmp_path / "ssn.pt"
    torch.save(fixture["state_dict"], path)
    return fixture, path


# -- convert ------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["file", "json text"])
def test_convert_then_load_reproduces_the_reference_output(ssn_checkpoint, tmp_path, given):
    fixture, checkpoint = ssn_checkpoint
    source = ["--spec", SSN_SPEC if given == "file" else idmzoo.load_spec(SSN_SPEC).to_json()]
    out = tmp_path / "ssn.safetensors"
    result = run_idmzoo("convert", checkpoint, *source, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "1,744,902 parameters" in result.stdout
    model = idmzoo.load(out)  # no spec needed
    with torch.no_grad():
        output = model.eval()(**fixture["inputs"])
    torch.testing.assert_close(output, fixture["output"], rtol=1e-4, atol=1e-4)


def test_convert_into_the_wrong_zoo_model_prints_the_mismatch_report(ssn_checkpoint, tmp_path):
    _, checkpoint = ssn_checkpoint
    result = run_idmzoo(
        "convert", checkpoint, "--model", "idm_cifar10_uncond", "-o", tmp_path / "x.safetensors"
    )
    assert result.returncode == 1
    assert "does not fit the UNetModel" in result.stderr
    assert "\n    time_embed.0.weight: checkpoint [128, 32], model [512, 128]\n" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_a_zoo_name_works_where_a_spec_file_does_and_a_misspelt_one_is_named():
    result = run_idmzoo("build", "idm_cifar10_uncond", "--device", "meta")
    assert result.returncode == 0, result.stderr
    assert "52,546,438" in result.stdout
    result = run_idmzoo("validate", "idm_cifar10_uncnd")
    assert result.returncode == 1
    assert "neither a spec file nor a zoo model. Did you mean 'idm_cifar10_uncond'" in result.stderr


# -- identify: matching on shapes ------------------------------------------------------------


def test_every_zoo_entry_is_identified_exactly_from_its_shapes(zoo):
    shapes, _ = zoo
    assert len(shapes) == len(idmzoo.list_models()) >= 17
    for name, expected in shapes.items():
        matches = match_zoo(expected, zoo=shapes)
        exact = {m.name for m in matches if m.exact}
        assert name in exact and matches[0].exact
        assert exact == {other for other, s in shapes.items() if s == expected}  # same architecture only


def test_a_narrower_variant_is_not_exact_but_its_entry_ranks_first_with_what_differs(zoo):
    shapes, _ = zoo
    narrower = idmzoo.build(idmzoo.zoo_spec("idm_cifar10_uncond", model_channels=64), device="meta")
    matches = match_zoo({k: tuple(v.shape) for k, v in narrower.state_dict().items()}, zoo=shapes)
    assert not any(m.exact for m in matches)
    assert matches[0].name == "idm_cifar10_uncond" and matches[0].names == 1.0
    assert "time_embed.0.weight: checkpoint [256, 64], zoo [512, 128]" in matches[0].differences()


def test_the_zoo_shapes_are_cached_on_disk(zoo, monkeypatch):
    shapes, cache = zoo
    monkeypatch.setenv("IDMZOO_CACHE", cache)
    monkeypatch.setattr(idmzoo.identification, "_model_shapes", lambda spec: pytest.fail("rebuilt the zoo"))
    zoo_shapes.cache_clear()
    try:
        assert zoo_shapes() == shapes
    finally:
        zoo_shapes.cache_clear()


RECONSTRUCTED = [name for name in sorted(fixture_index()) if "encoder" not in name and "noconv" not in name]
DETERMINED = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "channel_mult", "dims")


@pytest.mark.parametrize("name", RECONSTRUCTED)
def test_a_spec_is_reconstructed_from_reference_shapes_with_the_fields_they_determine(name):
    fixture = load_fixture(name)
    reference = spec_from_reference(fixture["library"], fixture["class"], fixture["kwargs"])
    rebuilt = spec_from_shapes({k: tuple(v.shape) for k, v in fixture["state_dict"].items()})
    assert rebuilt.spec is not None, rebuilt.reason
    family = reference.family.type
    width = 2 if family == "superres_unet" else 1  # a superres_unet has the weights of a unet with 2x inputs
    assert rebuilt.spec.in_channels == width * reference.in_channels
    for field in DETERMINED[1:]:
        assert getattr(rebuilt.spec, field) == getattr(reference, field), field
    for field in ("attention_resolutions", "num_classes", "upsample", "downsample"):
        assert getattr(rebuilt.spec, field) == getattr(reference, field), field
    assert rebuilt.spec.resblock == reference.resblock
    idmzoo.build(rebuilt.spec).load_state_dict(fixture["state_dict"], strict=True)
    assert any(item.startswith("attention.num_heads") for item in rebuilt.undetermined)
    assert any(item.startswith("dropout") for item in rebuilt.undetermined)


def test_shapes_that_are_not_a_unet_give_no_spec_and_say_why():
    assert spec_from_shapes({"w": (2, 2)}).reason == "not the tensor names of an improved-diffusion U-Net"


def test_identify_on_the_command_line_reports_no_exact_match_closest_entries_and_a_spec(zoo, tmp_path):
    _, cache = zoo
    path = idmzoo.save(
        idmzoo.load_checkpoint(SSN_SPEC, fixture_index()[SSN]["path"]), tmp_path / "ssn.safetensors"
    )
    result = run_idmzoo("identify", path, IDMZOO_CACHE=cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: 244 tensors"
    assert lines[1] == "no exact zoo match; closest:"
    assert all(line.startswith("  ") and "of tensor names and" in line for line in lines[2:5])
    assert "spec reconstructed from the shapes (it loads this checkpoint strictly):" in lines
    start = lines.index("spec reconstructed from the shapes (it loads this checkpoint strictly):") + 1
    end = lines.index("not determined by the shapes:")
    spec = idmzoo.load_spec("\n".join(lines[start:end]))
    assert spec.model_channels == 32 and spec.channel_mult == (1, 2, 2)
    assert "  dropout (assumed 0.0)" in lines[end:]


def test_identify_names_the_zoo_entry_a_checkpoint_fits(zoo, tmp_path, monkeypatch):
    """The Python API on a shape map (a .pt of 300M floats would be too big to write here)."""
    shapes, cache = zoo
    monkeypatch.setenv("IDMZOO_CACHE", cache)
    zoo_shapes.cache_clear()
    try:
        found = idmzoo.identify(shapes["adm_imagenet64_cond"])
    finally:
        zoo_shapes.cache_clear()
    assert found.exact == ("adm_imagenet64_cond",)
    assert found.reconstruction.spec is None  # not needed: the zoo entry is the spec
