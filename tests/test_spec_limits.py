"""Hostile and mistaken specs end in one clear error, before anything unbounded is read, laid out or allocated.

Each case here failed before issue 15 with a raw Python or torch error (OverflowError,
RecursionError, UnicodeDecodeError, "can't allocate 512 TB"), two errors at internal
union members, a 15 MB message, or a spec that validated and then failed in forward.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import idmzoo
from idmzoo import IdmzooError, Spec
from idmzoo.spec import MAX_BLOCKS, MAX_PARAMETERS, MAX_SPEC_BYTES, MAX_SPEC_DEPTH

BASE = {
    "in_channels": 3,
    "model_channels": 64,
    "out_channels": 3,
    "num_res_blocks": 2,
    "channel_mult": [1, 2],
}


def only_error(change: dict) -> dict:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({**BASE, **change})
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]


@pytest.fixture
def no_layout(monkeypatch):
    """Fail the test if the spec is laid out: size limits must be decided from arithmetic first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the spec was laid out")

    from idmzoo.models import families  # imported first, so it binds the real function

    monkeypatch.setattr(families, "unet_layout", refuse)


@pytest.mark.parametrize(
    "change, loc, message",
    [
        ({"channel_mult": [1e308, 1]}, ("channel_mult", 0), "positive finite number at most 1024"),
        (
            {"model_channels": 10**400, "channel_mult": [0.5, 1]},
            ("model_channels",),
            "less than or equal to 65536",
        ),
        ({"norm": {"type": "group_norm32", "eps": math.inf}}, ("norm", "eps"), "finite number"),
        ({"norm": {"type": "group_norm32", "eps": 10.0}}, ("norm", "eps"), "less than or equal to 1"),
        ({"dropout": math.nan}, ("dropout",), "finite number"),
        ({"channel_mult": [math.nan, 1]}, ("channel_mult", 0), "positive finite number"),
        ({"model_channels": 1}, ("model_channels",), "greater than or equal to 2"),
        ({"model_channels": 10**9}, ("model_channels",), "less than or equal to 65536"),
        ({"image_size": 2**30}, ("image_size",), "less than or equal to 65536"),
        ({"num_classes": 10**12}, ("num_classes",), "less than or equal to 1000000"),
        ({"num_res_blocks": 10**6}, ("num_res_blocks",), "from 1 to 1000"),
        (
            {"num_res_blocks": 1000, "channel_mult": [1, 1, 1, 1, 1]},
            ("num_res_blocks",),
            f"at most {MAX_BLOCKS:,}",
        ),
        (
            {"model_channels": 16384, "channel_mult": [1, 2, 4]},
            ("model_channels",),
            f"at most {MAX_PARAMETERS:,}",
        ),
        (
            {"model_channels": 128, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 1000},
            ("num_res_blocks",),
            "parameters",
        ),
        ({"model_channels": 8192, "channel_mult": [1], "num_classes": 10**6}, ("num_classes",), "parameters"),
        ({"dims": 3, "image_size": 65536, "channel_mult": [1]}, ("image_size",), "activation"),
        ({"attention_resolutions": list(range(1, 10**5))}, ("attention_resolutions",), "at most 32 items"),
        ({"channel_mult": [1] * 10**5}, ("channel_mult",), "at most 32 items"),
    ],
)
def test_numbers_at_the_edges_are_one_error_with_the_bound(no_layout, change, loc, message):
    error = only_error(change)
    assert error["loc"] == loc
    assert message in error["msg"]


def test_attention_rates_and_block_names_are_not_echoed_whole():
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({**BASE, "attention_resolutions": list(range(1, 10**5))})
    assert len(str(caught.value)) < 2000
    name = "x" * 10**8
    error = only_error({"norm": {"type": name}})
    assert error["loc"] == ("norm", "type") and len(error["msg"]) < 1000 and len(str(error["input"])) < 200
    key = "k" * 10**6
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({**BASE, key: 1})
    assert len(str(caught.value)) < 2000


def test_smallest_timestep_width_runs_forward():
    """model_channels=2 is the smallest with a timestep frequency; it builds and runs."""
    spec = {
        **BASE,
        "model_channels": 2,
        "channel_mult": [1],
        "norm": {"type": "group_norm32", "num_groups": 1},
    }
    model = idmzoo.build(spec, seed=0)
    assert model(torch.randn(1, 3, 4, 4), torch.tensor([3.0])).shape == (1, 3, 4, 4)


def test_the_estimate_errs_low_but_tracks_the_built_parameter_count():
    """The size limit is arithmetic; on every U-Net spec it is 0.6 to 1 times the real count."""
    for path in sorted((Path(__file__).parent.parent / "specs").glob("*.json")):
        spec = idmzoo.load_spec(path)
        if spec.family.type.endswith("encoder_unet"):
            continue
        sizes = spec.estimate_size()
        del sizes["blocks"]
        real = sum(p.numel() for p in idmzoo.build(spec, device="meta").parameters())
        assert 0.6 * real <= sum(sizes.values()) <= real, (path.name, sizes, real)


# -- files ---------------------------------------------------------------------------------------


def spec_text() -> str:
    return json.dumps(BASE)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (
            lambda p: p.write_text('{"x": ' + "[" * (MAX_SPEC_DEPTH + 5) + "]" * (MAX_SPEC_DEPTH + 5) + "}"),
            "nested more than 64",
        ),
        (lambda p: p.write_bytes(spec_text().encode("utf-16")), "encoded as UTF-16"),
        (lambda p: p.write_bytes(spec_text().encode("utf-32")), "encoded as UTF-32"),
        (lambda p: p.write_bytes(b'{"a": "\xff"}'), r"is not UTF-8: byte 7"),
        (lambda p: p.write_text('{"model_channels": ' + "9" * 5000 + "}"), "integer of 5,000 digits"),
        (lambda p: p.write_bytes(b" " * (MAX_SPEC_BYTES + 1)), f"at most {MAX_SPEC_BYTES:,} bytes"),
    ],
    ids=["deep", "depth-cap", "utf16", "utf32", "bad-utf8", "5000-digits", "too-big"],
)
def test_bad_spec_files_name_the_file_and_the_cause(tmp_path, write, message):
    path = tmp_path / "spec.json"
    write(path)
    with pytest.raises(IdmzooError, match=message) as caught:
        idmzoo.load_spec(path)
    assert "spec.json" in str(caught.value)


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(spec_text().encode("utf-8-sig"))
    assert idmzoo.load_spec(path).model_channels == 64


def test_devices_fifos_and_directories_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # nobody writes: reading would block forever
    with pytest.raises(IdmzooError, match=r"pipe.json'.*a FIFO \(named pipe\), not a regular file"):
        idmzoo.load_spec(fifo)
    with pytest.raises(IdmzooError, match=r"'/dev/zero'.*a character device"):  # read until MemoryError
        idmzoo.load_spec("/dev/zero")
    with pytest.raises(IdmzooError, match="a directory"):
        idmzoo.load_spec(tmp_path)


def test_structural_errors_are_capped_with_a_count_of_the_rest():
    from idmzoo.spec import MAX_ERRORS, _error, _raise

    with pytest.raises(ValidationError) as caught:
        _raise("Spec", [_error(("channel_mult", i), f"bad {i}", i) for i in range(MAX_ERRORS + 30)])
    errors = caught.value.errors()
    assert len(errors) == MAX_ERRORS + 1 and errors[-1]["msg"] == "... and 30 more errors"
