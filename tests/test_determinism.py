"""Determinism: the same spec and seed give bit-identical initial weights, in and across processes.

Run as ``python -m tests.test_determinism SEED SPEC...`` it prints one weight digest per
spec, which the cross-process test compares with digests computed here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import idmzoo

ROOT = Path(__file__).parents[1]
SPECS = [
    ROOT / "specs" / name
    for name in (
        "idm_uncond_ssn.json",
        "adm_classcond_legacy.json",
        "adm_encoder_attention.json",
        "adm_3d_rud.json",
    )
]


def digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer: name, dtype, shape and bytes."""
    sha = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        sha.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        sha.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.stem)
def test_manual_seed_then_build_twice_gives_identical_weights(path):
    torch.manual_seed(1234)
    first = idmzoo.build(path)
    torch.manual_seed(1234)
    second = idmzoo.build(path)
    assert digest(first) == digest(second)
    torch.manual_seed(1235)
    assert digest(idmzoo.build(path)) != digest(first)


@pytest.mark.parametrize("path", SPECS, ids=lambda path: path.stem)
def test_seed_argument_is_the_same_as_seeding_torch_first(path):
    torch.manual_seed(7)
    expected = digest(idmzoo.build(path))
    assert digest(idmzoo.build(path, seed=7)) == expected
    assert digest(idmzoo.build(path, seed=8)) != expected


def test_seed_leaves_the_callers_random_state_untouched():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    idmzoo.build(SPECS[0], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    idmzoo.build(SPECS[0])  # without a seed, initialisation draws from the global generator
    assert not torch.equal(torch.get_rng_state(), state)


def test_seed_covers_float16_models():
    spec = {**idmzoo.load_spec(SPECS[1]).model_dump(), "use_fp16": True}
    assert digest(idmzoo.build(spec, seed=5)) == digest(idmzoo.build(spec, seed=5))


@pytest.mark.parametrize("seed", ["0", 1.0, True])
def test_seed_must_be_an_int(seed):
    with pytest.raises(TypeError, match=rf"seed must be an int or None, but got {type(seed).__name__}"):
        idmzoo.build(SPECS[0], seed=seed)


def test_weights_are_identical_across_processes():
    seed = 2024
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_determinism", str(seed), *map(str, SPECS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert result.stdout.split() == [digest(idmzoo.build(path, seed=seed)) for path in SPECS]


if __name__ == "__main__":
    for spec_path in sys.argv[2:]:
        print(digest(idmzoo.build(spec_path, seed=int(sys.argv[1]))))
