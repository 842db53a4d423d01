"""The zoo in timm's model registry."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import idmzoo_timm
import pytest
import timm
import torch
from idmzoo_timm.models import NoPretrainedWeightsError
from pydantic import ValidationError

import idmzoo
from tests.test_download import Server, serving

ZOO = idmzoo.list_models()
SMALL = {"model_channels": 32, "num_res_blocks": 1}


def test_timm_lists_every_zoo_model_by_its_zoo_name():
    assert timm.list_models("idm_*") == sorted(e.name for e in ZOO if e.name.startswith("idm_"))
    assert set(timm.list_models([e.name for e in ZOO])) == {e.name for e in ZOO}
    assert {"cm_imagenet64", "p2_256_uncond", "repaint_places256", "blinddps_tilt256"} <= set(
        timm.list_models()
    )
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


def test_pretrained_downloads_through_idmzoo_s_cache(tmp_path, monkeypatch):
    """The published URL's path, served by a loopback mirror; overrides keep the model small."""
    source = idmzoo.create("idm_cifar10_uncond", seed=0, **SMALL)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    data = buffer.getvalue()
    record = idmzoo.zoo.get_entry("idm_cifar10_uncond").checkpoint("cifar10_uncond_vlb_50M_500K.pt")
    path = "/diffusion/march-2021/cifar10_uncond_vlb_50M_500K.pt"
    assert record.url.endswith(path)
    monkeypatch.setenv("IDMZOO_CACHE", str(tmp_path))
    with serving(Server(files={path: data})) as server:
        monkeypatch.setenv("IDMZOO_MIRROR", server.base)
        model = timm.create_model(
            "idm_cifar10_uncond", pretrained=True, checkpoint="cifar10_uncond_vlb_50M_500K.pt", **SMALL
        )
        assert [p for p, _ in server.requests] == [path]
    cached = Path(tmp_path) / "checkpoints" / "cifar10_uncond_vlb_50M_500K.pt"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_pretrained_without_a_direct_link_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("IDMZOO_CACHE", str(tmp_path))
    with pytest.raises(
        NoPretrainedWeightsError,
        match=r"kernel_checkpoint\.pt of zoo model 'blinddps_kernel64' has no direct download link"
        r"[\s\S]*drive\.google\.com[\s\S]*idmzoo\.load_checkpoint",
    ) as info:
        timm.create_model("blinddps_kernel64", pretrained=True)
    assert isinstance(info.value, idmzoo.ManualDownloadError)
    assert str(tmp_path / "checkpoints" / "kernel_checkpoint.pt") in str(info.value)


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
