"""A built model trains under DDP and FSDP2 exactly as on one process with the global batch.

Two processes with the gloo backend on CPU each take half of the batch for a few SGD
steps; their final parameters must match a single-process run on the whole batch.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import idmzoo
from tests.fixtures import TINY_ADM

WORLD_SIZE = 2
STEPS = 3
#: A hung process fails the test instead of the whole run.
TIMEOUT_S = 300
#: Small, with every block kind and class labels; no dropout, whose masks depend on the
#: process layout.
SPEC = {**TINY_ADM, "dropout": 0.0}


def initial_model() -> idmzoo.models.base.IdmzooModel:
    """The same random weights in every process (no zero-initialised layer)."""
    model = idmzoo.build(SPEC)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    batch = 2 * WORLD_SIZE
    x = torch.randn(batch, 3, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator).float()
    y = torch.randint(0, 3, (batch,), generator=generator)
    return x, t, y


def train(model: torch.nn.Module, rank: int, world_size: int) -> None:
    """SGD on this rank's equal share of each global batch; the loss is a mean, so the
    all-reduced (averaged) gradient equals the single-process gradient of the whole batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        x, t, y = (part.chunk(world_size)[rank] for part in global_batch(step))
        model(x, t, y).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _worker(rank: int, mode: str, rendezvous: str, out: str) -> None:
    # A file rendezvous: no TCP port to pick, so no race with other programs for one.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)
    try:
        _train_and_save(rank, mode, out)
        # The wrappers are gone now; free them while the process group is still registered,
        # so their last reference to it is not dropped holding the GIL (a known deadlock
        # of the gloo process group's destructor).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train_and_save(rank: int, mode: str, out: str) -> None:
    model = initial_model()
    if mode == "ddp":
        wrapped: torch.nn.Module = DistributedDataParallel(model)
    else:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for block in [*model.input_blocks, model.middle_block, *model.output_blocks]:
            fully_shard(block, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    train(wrapped, rank, WORLD_SIZE)
    state = {
        name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
        for name, value in model.state_dict().items()
    }
    if rank == 0:
        torch.save(state, out)


@pytest.fixture(scope="module")
def single_process_result() -> dict[str, torch.Tensor]:
    model = initial_model()
    train(model, rank=0, world_size=1)
    return model.state_dict()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_training_matches_one_process(mode, single_process_result, tmp_path: Path):
    out = tmp_path / "state.pt"
    rendezvous = str(tmp_path / "rendezvous")
    processes = mp.spawn(_worker, args=(mode, rendezvous, str(out)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not processes.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} training processes did not finish within {TIMEOUT_S} s")
    state = torch.load(out, weights_only=True)
    initial = initial_model().state_dict()
    assert state.keys() == single_process_result.keys()
    trained = [name for name, value in single_process_result.items() if not torch.equal(value, initial[name])]
    assert len(trained) > len(initial) // 2  # the comparison below is not of untouched weights
    for name, expected in single_process_result.items():
        torch.testing.assert_close(state[name], expected, atol=1e-5, rtol=1e-4, msg=name)
