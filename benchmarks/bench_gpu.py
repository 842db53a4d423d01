"""GPU figures: fwd+bwd and sampling of the zoo's ImageNet-64 and 256 models, per precision and kernel.

For each model (``adm_imagenet64_cond``, ``adm_imagenet256_cond``: ``specs/*.json``) every
variant below is the same weights run differently, against the reference-style path
(``idmzoo.attention_backend("math")``, float32, NCHW), in the same run:

- ``reference-style``: the reference's einsum attention, float32;
- ``fp32``: idmzoo's default (SDPA, the kernel PyTorch picks);
- ``fp32 flash`` / ``fp32 mem-efficient``: SDPA restricted to one kernel
  (``torch.nn.attention.sdpa_kernel``); a kernel the device lacks is reported as n/a;
- ``bf16 autocast``: ``torch.autocast(dtype=torch.bfloat16)``;
- ``fp16 torso``: the spec's ``use_fp16`` (``model.convert_to_fp16()``), as the original;
- ``bf16 channels_last``: autocast with model and input in ``torch.channels_last``;
- ``bf16 compiled``: autocast and ``torch.compile`` (the compilation is in the warm-up).

A training step is forward, backward and ``zero_grad`` of a squared-error loss; sampling is
the 50-step DDIM loop of ``bench_sampling.py`` under ``torch.inference_mode``.  Time is
the median of interleaved rounds (CUDA synchronised); memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the step (on CPU,
``memory.peak_allocated_bytes``).

``--smoke`` runs everything once on tiny widths (model_channels 32, 1 res block, 8 and 32 px,
batch 1, 1 sampling step, no warm-up, compilation by the ``eager`` backend) on whatever device there is,
CPU included: CI runs it so the script cannot rot.  Its figures mean nothing.

Usage::

    python benchmarks/bench_gpu.py --device cuda                 # the figures
    python benchmarks/bench_gpu.py --device cuda --models adm_imagenet64_cond --batch 8
    python benchmarks/bench_gpu.py --smoke                       # CI: runs on CPU in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_blocks import machine
from bench_sampling import ddim_loop
from memory import peak_allocated_bytes
from torch.nn.attention import SDPBackend, sdpa_kernel

import idmzoo

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"adm_imagenet64_cond": 64, "adm_imagenet256_cond": 256}
#: Tiny widths for --smoke: every block kind and the attention still run.
SMOKE = {"model_channels": 32, "num_res_blocks": 1}
SMOKE_SIZES = {"adm_imagenet64_cond": 8, "adm_imagenet256_cond": 32}


@dataclass(frozen=True)
class Variant:
    """One way of running the model."""

    name: str
    attention: idmzoo.runtime.AttentionBackend = "sdpa"
    kernel: SDPBackend | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16_torso
    channels_last: bool = False
    compile: bool = False


VARIANTS = (
    Variant("reference-style", attention="math"),
    Variant("fp32"),
    Variant("fp32 flash", kernel=SDPBackend.FLASH_ATTENTION),
    Variant("fp32 mem-efficient", kernel=SDPBackend.EFFICIENT_ATTENTION),
    Variant("bf16 autocast", precision="bf16"),
    Variant("fp16 torso", precision="fp16_torso"),
    Variant("bf16 channels_last", precision="bf16", channels_last=True),
    Variant("bf16 compiled", precision="bf16", compile=True),
)


def load(name: str, smoke: bool) -> tuple[dict[str, Any], int]:
    """The spec data of a zoo model (float32; ``use_fp16`` is a variant) and its resolution."""
    data = json.loads((ROOT / "specs" / f"{name}.json").read_text()) | {"use_fp16": False}
    if not smoke:
        return data, MODELS[name]
    attention = {**data["attention"], "num_head_channels": 16}
    return data | SMOKE | {"attention": attention}, SMOKE_SIZES[name]


class Runner:
    """A model's variants on one device: built once, run by closures."""

    def __init__(self, data: dict[str, Any], resolution: int, batch: int, device: torch.device) -> None:
        self.device = device
        torch.manual_seed(0)
        self.model = idmzoo.build(data, device=device)
        for p in self.model.parameters():  # trained-like weights
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        self.x = torch.randn(batch, data["in_channels"], resolution, resolution, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device).float()
        self.y = torch.randint(0, data["num_classes"], (batch,), device=device)
        self._models: dict[Variant, torch.nn.Module] = {}

    def model_for(self, v: Variant, compile_backend: str) -> torch.nn.Module:
        if v not in self._models:
            model = copy.deepcopy(self.model)
            if v.precision == "fp16_torso":
                model.convert_to_fp16()
            if v.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._models[v] = torch.compile(model, backend=compile_backend) if v.compile else model
        return self._models[v]

    @contextlib.contextmanager
    def context(self, v: Variant) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(idmzoo.attention_backend(v.attention))
            if v.kernel is not None:
                stack.enter_context(sdpa_kernel([v.kernel]))
            if v.precision == "bf16":
                stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            yield

    def inputs(self, v: Variant) -> torch.Tensor:
        return self.x.contiguous(memory_format=torch.channels_last) if v.channels_last else self.x

    def train_step(self, v: Variant, compile_backend: str) -> Callable[[], None]:
        model, x = self.model_for(v, compile_backend), self.inputs(v)

        def run() -> None:
            with self.context(v):
                model(x, self.t, y=self.y).float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    def sample(self, v: Variant, compile_backend: str, steps: int) -> Callable[[], None]:
        model, x = self.model_for(v, compile_backend).eval(), self.inputs(v)

        def denoiser(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(h, t, y=self.y).float()

        def run() -> None:
            with self.context(v), torch.inference_mode():
                ddim_loop(denoiser, x, steps)
            model.train()

        return run


def timed(work: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak(work: Callable[[], None], device: torch.device) -> int:
    if device.type != "cuda":
        return peak_allocated_bytes(work)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    work()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(runner: Runner, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Median time and peak memory of a training step and of a sampling loop, per variant.

    A smoke run times its single run inside the memory measurement, with no warm-up.
    """
    results: dict[str, dict[str, Any]] = {}
    works: dict[str, dict[str, Callable[[], None]]] = {}
    times: dict[str, dict[str, list[float]]] = {}
    peaks: dict[str, dict[str, int]] = {}
    for v in VARIANTS:
        try:
            works[v.name] = {
                "train": runner.train_step(v, args.compile_backend),
                "sample": runner.sample(v, args.compile_backend, args.steps),
            }
            times[v.name], peaks[v.name] = {"train": [], "sample": []}, {}
            for kind, work in works[v.name].items():  # warm-up (and compilation); fails if unsupported
                if args.smoke:  # one run, timed and measured at once
                    start = time.perf_counter()
                    peaks[v.name][kind] = peak(work, runner.device)
                    times[v.name][kind].append(time.perf_counter() - start)
                else:
                    work()
        except (RuntimeError, NotImplementedError) as err:
            results[v.name] = {"error": " ".join(str(err).split())[:60]}
            works.pop(v.name, None)
    for _ in range(0 if args.smoke else args.repeats):
        for name, pair in works.items():
            for kind, work in pair.items():
                times[name][kind].append(timed(work, runner.device))
    for name, pair in works.items():
        if not args.smoke:
            peaks[name] = {kind: peak(work, runner.device) for kind, work in pair.items()}
        results[name] = {
            "train_s": statistics.median(times[name]["train"]),
            "sample_s": statistics.median(times[name]["sample"]),
            "train_peak": peaks[name]["train"],
            "sample_peak": peaks[name]["sample"],
        }
    return results


def print_table(name: str, batch: int, results: dict[str, dict[str, Any]], steps: int) -> None:
    print(f"{name}, batch {batch}; ratios against reference-style")
    print(
        "| variant | fwd+bwd s | ×ref | train peak MiB | ×ref | images/s | ×ref | sampling peak MiB | ×ref |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ref = results["reference-style"]
    for variant, r in results.items():
        if "error" in r:
            print(f"| {variant} | n/a: {r['error']} |  |  |  |  |  |  |  |")
            continue
        rate = batch / r["sample_s"]
        print(
            f"| {variant} | {r['train_s']:.3f} | {r['train_s'] / ref['train_s']:.2f} | "
            f"{r['train_peak'] / 2**20:.1f} | {r['train_peak'] / max(ref['train_peak'], 1):.2f} | "
            f"{rate:.2f} | {rate * ref['sample_s'] / batch:.2f} | {r['sample_peak'] / 2**20:.1f} | "
            f"{r['sample_peak'] / max(ref['sample_peak'], 1):.2f} |"
        )
    print(f"(sampling: {steps} DDIM steps; ×ref of images/s: higher is faster)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is kept")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--smoke", action="store_true", help="tiny widths, batch 1, 1 step, 1 round (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.repeats, args.compile_backend = 1, 1, 1, "eager"
    device = torch.device(args.device)
    m = machine()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else m["cpu"]
    print(
        f"device {device} ({gpu}), torch {m['torch']}{', smoke run: figures mean nothing' if args.smoke else ''}"
    )
    for name in args.models.split(","):
        data, resolution = load(name, args.smoke)
        runner = Runner(data, resolution, args.batch, device)
        print_table(f"{name} at {resolution}px", args.batch, measure(runner, args), args.steps)


if __name__ == "__main__":
    main()
