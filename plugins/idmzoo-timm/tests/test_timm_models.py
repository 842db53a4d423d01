"""The zoo in timm's model registry."""

from __future__ import annotations

import idmzoo_timm
import pytest
import timm
import torch
from idmzoo_timm.models import NoPretrainedWeightsError
from pydantic import ValidationError

import idmzoo

ZOO = idmzoo.list_models()
SMALL = {"model_channels": 32, "num_res_blocks": 1}


def test_timm_lists_every_zoo_model_by_its_zoo_name():
    assert timm.list_models("idm_*") == sorted(e.name for e in ZOO if e.name.startswith("idm_"))
    assert set(timm.list_models(["idm_*", "adm_*"])) == {e.name for e in ZOO}
    assert all(getattr(idmzoo_timm.models, e.name) is timm.models.model_entrypoint(e.name) for e in ZOO)


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_timm_create_model_builds_the_zoo_entry(entry):
    model = timm.create_model(entry.name, device="meta")
    assert model.spec == entry.spec()
    assert sum(p.numel() for p in model.parameters()) == entry.param_count


def test_timm_keyword_arguments_are_validated_spec_overrides():
    model = timm.create_model("idm_cifar10_uncond", **SMALL)
    out = model(torch.randn(1, 3, 16, 16), torch.tensor([5.0]))
    assert out.shape == (1, 6, 16, 16)
    with pytest.raises(ValidationError, match="num_res_blokcs"):
        timm.create_model("idm_cifar10_uncond", num_res_blokcs=1)


def test_pretrained_explains_how_to_load_a_published_checkpoint():
    with pytest.raises(
        NoPretrainedWeightsError,
        match=r"adm_imagenet256_cond has no pretrained weights to download"
        r"[\s\S]*256x256_diffusion\.pt[\s\S]*idmzoo\.load_checkpoint",
    ):
        timm.create_model("adm_imagenet256_cond", pretrained=True)


def test_checkpoint_loads_into_a_timm_created_model(tmp_path):
    source = timm.create_model("idm_cifar10_uncond", **SMALL)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_(0.0, 0.1)
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5.0])
    via_idmzoo = idmzoo.load_checkpoint(timm.create_model("idm_cifar10_uncond", device="meta", **SMALL), path)
    via_timm = timm.create_model("idm_cifar10_uncond", checkpoint_path=str(path), **SMALL)
    with torch.no_grad():  # eval(): this entry has dropout 0.3
        expected = source.eval()(x, t)
        assert torch.equal(via_idmzoo.eval()(x, t), expected)
        assert torch.equal(via_timm.eval()(x, t), expected)
