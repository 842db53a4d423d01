"""Sampling throughput: a 50-step DDIM loop, idmzoo's defaults against the original code.

Both models have the same weights (improved-diffusion's ``UNetModel``, imported at run time
from a clone as ``bench_reference.py`` does, never copied here) and run the same
deterministic DDIM loop (eta 0, 50 of the 1000 steps of the linear schedule) in ``eval()``
under ``torch.inference_mode``: forward passes only.  Each is run eagerly and compiled
(``torch.compile``, inductor); the compilation happens in the warm-up and is reported
apart.  Loops are timed interleaved, one round running every variant once, and the
median round is kept; images per second and peak memory are printed as ratios against
the original code measured in the same run, with the load average.

Usage::

    python benchmarks/bench_sampling.py --reference-repo /path/to/improved-diffusion
    python benchmarks/bench_sampling.py --reference-repo ... --config cifar10 --batch 4 --no-compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_blocks import machine
from bench_reference import REFERENCE_KWARGS, import_reference_unet
from memory import peak_allocated_bytes

import idmzoo
from idmzoo.reference import spec_from_reference

#: A configuration small enough for 50 steps of every variant in a few minutes on a CPU:
#: the CIFAR-10 arguments at half the width, 2 res blocks per level, 32x32.
SMALL = ({**REFERENCE_KWARGS["cifar10"][0], "model_channels": 64, "num_res_blocks": 2}, 32)
#: For a machine shared with other work: a quarter of the width, 1 res block per level.
TINY = ({**REFERENCE_KWARGS["cifar10"][0], "model_channels": 32, "num_res_blocks": 1}, 32)
CONFIGS = {"tiny": TINY, "small": SMALL, "cifar10": (REFERENCE_KWARGS["cifar10"][0], 32)}


def ddim_loop(model: torch.nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic DDIM (eta 0) over ``steps`` evenly spaced steps of a 1000-step linear schedule."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = torch.cumprod(1 - betas, 0)
    timesteps = list(range(0, 1000, 1000 // steps))[::-1]
    channels = x.shape[1]
    for i, t in enumerate(timesteps):
        a = alphas[t].item()
        a_prev = alphas[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
        eps = model(x, torch.full((x.shape[0],), float(t)))[:, :channels]  # learned sigma: drop it
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-repo", type=Path, required=True, help="a clone of openai/improved-diffusion"
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs, resolution = CONFIGS[args.config]

    with tempfile.TemporaryDirectory() as folder:
        reference_cls = import_reference_unet(args.reference_repo, Path(folder))
        torch.manual_seed(0)
        ours = idmzoo.build(spec_from_reference("improved-diffusion", "UNetModel", kwargs))
        for p in ours.parameters():  # trained-like weights (a fresh model's output convs are zero)
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        original = reference_cls(**kwargs)
        original.load_state_dict(ours.state_dict())
        ours.eval(), original.eval()
        models: dict[str, torch.nn.Module] = {"original code": original, "idmzoo default": ours}
        if not args.no_compile:
            models["original code, compiled"] = torch.compile(original)
            models["idmzoo default, compiled"] = torch.compile(ours)
        x = torch.randn(args.batch, kwargs["in_channels"], resolution, resolution)

        def sample(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.inference_mode():
                    return ddim_loop(model, x, args.steps)

            return run

        warmup, samples = {}, {}
        for name, model in models.items():  # compiles the compiled variants
            start = time.perf_counter()
            samples[name] = sample(model)()
            warmup[name] = time.perf_counter() - start
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                sample(model)()
                times[name].append(time.perf_counter() - start)
        load_after = os.getloadavg()
        peaks = {name: peak_allocated_bytes(sample(model)) for name, model in models.items()}

    m = machine()
    difference = (samples["idmzoo default"] - samples["original code"]).abs().max().item()
    print(
        f"{args.config}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, batch "
        f"{args.batch}, {resolution}px, {args.steps} DDIM steps; max |sample difference| {difference:.1e}"
    )
    print(
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print("| model | s per loop (median) | images/s | ×original | peak MiB | ×original | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    base_time, base_peak = statistics.median(times["original code"]), peaks["original code"]
    for name in models:
        median = statistics.median(times[name])
        print(
            f"| {name} | {median:.2f} | {args.batch / median:.2f} | {base_time / median:.2f} | "
            f"{peaks[name] / 2**20:.1f} | {peaks[name] / base_peak:.2f} | {warmup[name]:.1f} |"
        )
    print("×original: images/s as a multiple of the original code's (higher is faster); memory as a ratio")


if __name__ == "__main__":
    main()
