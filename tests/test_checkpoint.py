"""load_checkpoint: reference-format state dicts, safely, into real or meta-built models."""

from __future__ import annotations

import os
import re

import pytest
import torch

import idmzoo
from idmzoo.checkpoint import read_state_dict
from idmzoo.errors import CheckpointError
from idmzoo.reference import spec_from_reference
from idmzoo.zoo import zoo_spec
from tests.fixtures import fixture_index, load_fixture

SMALL_SPEC = "specs/idm_uncond_ssn.json"


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, so zero-initialised output layers cannot hide a wrong load."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1, generator=generator)
    return model


def run(model: torch.nn.Module, size: int = 16) -> torch.Tensor:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x, torch.tensor([517.0]))


# -- acceptance: a zoo model's state dict round-trips through a file --------------------


@pytest.mark.slow
def test_zoo_model_state_dict_reloads_into_fresh_models_with_identical_outputs(tmp_path):
    source = randomized(idmzoo.create("idm_cifar10_uncond"))
    path = tmp_path / "cifar10.pt"
    torch.save(source.state_dict(), path)
    expected = run(source)

    into_fresh_model = idmzoo.load_checkpoint(idmzoo.create("idm_cifar10_uncond"), path)
    from_spec = idmzoo.load_checkpoint(zoo_spec("idm_cifar10_uncond"), path)
    materialized = idmzoo.create("idm_cifar10_uncond", device="meta").to_empty(device="cpu")
    materialized = idmzoo.load_checkpoint(materialized, path)
    for model in (into_fresh_model, from_spec, materialized):
        assert torch.equal(run(model), expected)
    assert not any(t.is_meta for t in from_spec.state_dict().values())


@pytest.mark.parametrize("name", ["idm_uncond_ssn", "adm_classcond_legacy", "adm_neworder_rud"])
def test_reference_saved_fixture_loads_and_reproduces_the_reference_output(name):
    fixture = load_fixture(name)
    spec = spec_from_reference(fixture["library"], fixture["class"], fixture["kwargs"])
    # The fixture file nests the reference's state dict under "state_dict".
    model = idmzoo.load_checkpoint(spec, fixture_index()[name]["path"])
    with torch.no_grad():
        out = model.eval()(**fixture["inputs"])
    torch.testing.assert_close(out, fixture["output"], rtol=1e-4, atol=1e-4)


# -- meta models and precision ----------------------------------------------------------


def test_spec_load_allocates_once_and_keeps_the_fp16_torso(tmp_path):
    spec = idmzoo.load_spec(SMALL_SPEC).model_copy(update={"use_fp16": True})
    source = randomized(idmzoo.build(SMALL_SPEC))
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    loaded = torch.load(path, weights_only=True)

    model = idmzoo.load_checkpoint(spec, path)
    stem = model.input_blocks[0][0].weight
    assert stem.dtype == torch.float16
    assert torch.equal(stem, loaded["input_blocks.0.0.weight"].half())
    fp32_param = model.time_embed[0].weight
    assert fp32_param.dtype == torch.float32
    assert torch.equal(fp32_param, loaded["time_embed.0.weight"])


def test_meta_model_is_loaded_in_place_of_its_meta_tensors(tmp_path):
    source = randomized(idmzoo.build(SMALL_SPEC))
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    model = idmzoo.build(SMALL_SPEC, device="meta")
    assert idmzoo.load_checkpoint(model, path) is model
    assert torch.equal(run(model), run(source))


# -- what files are accepted ---------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``open(path, "w")``: code a checkpoint must never execute."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    with pytest.raises(
        CheckpointError, match=r"refused to load .*: unpickling it would call \S*open, and .*never runs code"
    ):
        idmzoo.load_checkpoint(SMALL_SPEC, path)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    proof = tmp_path / "payload-proof"
    torch.save(_Payload(str(proof)), tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()


def test_wrapped_state_dicts_are_accepted_only_when_unambiguous(tmp_path):
    state = {"a.weight": torch.ones(2), "a.bias": torch.zeros(2)}
    torch.save({"ema": state, "step": 10}, tmp_path / "ema.pt")
    assert read_state_dict(tmp_path / "ema.pt").keys() == state.keys()

    torch.save({"model": state, "ema": state}, tmp_path / "both.pt")
    with pytest.raises(
        CheckpointError, match=r"several state dicts \('model', 'ema'\); choose one with .*key="
    ):
        read_state_dict(tmp_path / "both.pt")
    assert read_state_dict(tmp_path / "both.pt", key="ema").keys() == state.keys()
    with pytest.raises(CheckpointError, match="has no state dict under key 'optimizer'"):
        read_state_dict(tmp_path / "both.pt", key="optimizer")

    torch.save({"step": 10, "lr": 1e-4}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="is not a state dict .* top-level keys: 'step', 'lr'"):
        read_state_dict(tmp_path / "none.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*missing.pt"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text.pt' is not a torch checkpoint: it starts with b'not "):
        read_state_dict(tmp_path / "text.pt")
    torch.save({"a.weight": torch.ones(1000)}, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:600])
    with pytest.raises(CheckpointError, match="truncated.pt' is not a torch checkpoint, or is damaged"):
        read_state_dict(tmp_path / "truncated.pt")


# -- mismatches ------------------------------------------------------------------------------


def test_mismatch_lists_missing_unexpected_and_shape_keys_grouped_and_truncated(tmp_path):
    small = idmzoo.load_spec(SMALL_SPEC)
    state = randomized(idmzoo.build(small)).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("middle_block.")}  # 20+ missing
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "small.pt"
    torch.save(state, path)
    wider_output = small.model_copy(update={"out_channels": 3})
    with pytest.raises(CheckpointError) as info:
        idmzoo.load_checkpoint(wider_output, path)
    message = str(info.value)
    missing = sum(1 for k in idmzoo.build(small, device="meta").state_dict() if k.startswith("middle_block."))
    assert f"missing from the checkpoint ({missing}):" in message
    assert f"... and {missing - 10} more" in message
    assert "unexpected in the checkpoint (1):\n    extra.weight" in message
    assert "shape mismatch (2):" in message
    assert "out.2.weight: checkpoint [6, 32, 3, 3], model [3, 32, 3, 3]" in message
    assert "on the meta device" in message


def test_strict_false_skips_missing_and_unexpected_keys_but_not_shapes(tmp_path):
    source = randomized(idmzoo.build(SMALL_SPEC))
    state = dict(source.state_dict())
    dropped = state.pop("out.2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")

    model = idmzoo.build(SMALL_SPEC)
    before = model.out[2].bias.clone()
    idmzoo.load_checkpoint(model, tmp_path / "partial.pt", strict=False)
    assert torch.equal(model.time_embed[0].weight, source.time_embed[0].weight)
    assert torch.equal(model.out[2].bias, before) and not torch.equal(before, dropped)

    with pytest.raises(
        CheckpointError, match=r"meta device.*\n  missing from the checkpoint \(1\):\n    out.2.bias"
    ):
        idmzoo.load_checkpoint(idmzoo.build(SMALL_SPEC, device="meta"), tmp_path / "partial.pt", strict=False)

    state["out.2.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "wrong_shape.pt")
    with pytest.raises(
        CheckpointError, match=r"shape mismatch \(1\):\n    out.2.bias: checkpoint \[3\], model \[6\]"
    ):
        idmzoo.load_checkpoint(idmzoo.build(SMALL_SPEC), tmp_path / "wrong_shape.pt", strict=False)


# -- hostile and mistaken files (issue 15) -----------------------------------------------------


def test_empty_and_text_files_are_named_not_raw_eof_or_key_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt' is empty \(0 bytes\)"):
        read_state_dict(tmp_path / "empty.pt")
    (tmp_path / "hello.pt").write_text("hello world\n")  # torch: KeyError: 101
    with pytest.raises(CheckpointError, match=r"hello.pt' is not a torch checkpoint: it starts with b'hell'"):
        read_state_dict(tmp_path / "hello.pt")
    (tmp_path / "cut.pt").write_bytes(b"\x80\x02")  # a pickle header and nothing else: EOFError
    with pytest.raises(CheckpointError, match=r"cut.pt' is not a torch checkpoint, or is damaged"):
        read_state_dict(tmp_path / "cut.pt")


def test_fifos_devices_and_directories_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)  # nobody writes: reading it would hang
    with pytest.raises(CheckpointError, match=r"pipe.pt'.*a FIFO \(named pipe\), not a regular file"):
        read_state_dict(fifo)
    with pytest.raises(CheckpointError, match=r"/dev/zero'.*a character device"):
        read_state_dict("/dev/zero")
    with pytest.raises(CheckpointError, match="a directory"):
        read_state_dict(tmp_path)


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def test_refused_pickle_names_the_callable_and_not_torchs_advice(tmp_path):
    torch.save({"w": _System()}, tmp_path / "system.pt")
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(tmp_path / "system.pt")
    message = str(caught.value)
    assert re.search(r"would call (posix|nt|os)\.system", message), message
    assert "weights_only=False will likely succeed" not in message
    assert "not a torch checkpoint" not in message


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_ddp_and_compile_prefixes_get_a_hint_and_strip_prefix_loads_them(tmp_path, wrapper):
    model = idmzoo.build(SMALL_SPEC, seed=0)
    torch.save({wrapper + k: v for k, v in model.state_dict().items()}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError) as caught:
        idmzoo.load_checkpoint(SMALL_SPEC, tmp_path / "wrapped.pt")
    assert f"every checkpoint key starts with {wrapper!r}" in str(caught.value)
    assert "strip_prefix=True" in str(caught.value)
    for strip in (True, wrapper):
        loaded = idmzoo.load_checkpoint(SMALL_SPEC, tmp_path / "wrapped.pt", strip_prefix=strip)
        assert torch.equal(run(loaded), run(model))


def test_integer_bool_complex_sparse_and_meta_tensors_are_refused(tmp_path):
    model = idmzoo.build(SMALL_SPEC, seed=0)
    state = model.state_dict()
    name = "time_embed.0.weight"
    for label, tensor in {
        "int64": state[name].long(),
        "bool": state[name].bool(),
    }.items():
        torch.save({**state, name: tensor}, tmp_path / f"{label}.pt")
        with pytest.raises(
            CheckpointError, match=rf"(?s)not floating point.*{name}: checkpoint torch.{label}"
        ):
            idmzoo.load_checkpoint(SMALL_SPEC, tmp_path / f"{label}.pt")
    for label, tensor in {
        "complex": state[name].to(torch.complex64),
        "sparse": state[name].to_sparse(),
        "meta": torch.empty(state[name].shape, device="meta"),
    }.items():
        torch.save({**state, name: tensor}, tmp_path / f"{label}.pt")
        with pytest.raises(CheckpointError, match=rf"cannot be weights .*{name} \("):
            idmzoo.load_checkpoint(SMALL_SPEC, tmp_path / f"{label}.pt")
