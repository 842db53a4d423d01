"""idmzoo's default blocks against the reference-style path, measured in one run.

Every variant is the same model with the same weights; only run-time choices differ:

- ``reference``: the reference's einsum attention (``attention_backend("math")``), no
  checkpointing, NCHW tensors: what improved-/guided-diffusion compute.
- ``default``: what ``idmzoo.build`` gives (SDPA attention).
- ``channels_last``: the default with model and input in ``torch.channels_last``.
- ``ckpt_attention`` / ``ckpt_all`` / ``ckpt_selective``: the default with gradient
  checkpointing (``ckpt_selective`` keeps convolution, matmul and attention outputs).

Timings are interleaved (one round runs every variant once) and the best round is kept,
so a busy machine slows all variants alike.  Ratios are against ``reference``.

Usage::

    python benchmarks/bench_blocks.py --config cifar10
    python benchmarks/bench_blocks.py --config attention --resolution 128 --variants reference,default
    python benchmarks/bench_blocks.py --config specs/adm_imagenet64_cond.json --batch 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from memory import peak_allocated_bytes
from torch.utils.flop_counter import FlopCounterMode

import idmzoo

__all__ = ["CONFIGS", "Variant", "VARIANTS", "benchmark_spec", "Bench", "dense_matmul_flops", "machine"]

ROOT = Path(__file__).resolve().parent.parent

#: Named configurations of the issue: (spec file, overrides, batch, resolution).
CONFIGS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "cifar10": ("specs/idm_cifar10_uncond.json", {}, 4, 32),
    "attention": ("specs/idm_cifar10_uncond.json", {"model_channels": 64, "num_res_blocks": 2}, 2, 64),
}


@dataclass(frozen=True)
class Variant:
    """One way of running the same model."""

    name: str
    attention: idmzoo.runtime.AttentionBackend
    checkpointing: idmzoo.runtime.Checkpointing
    channels_last: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("reference", "math", "none"),
        Variant("default", "sdpa", "none"),
        Variant("channels_last", "sdpa", "none", channels_last=True),
        Variant("ckpt_attention", "sdpa", "attention"),
        Variant("ckpt_all", "sdpa", "all"),
        Variant("ckpt_selective", "sdpa", "selective"),
    )
}


def benchmark_spec(config: str) -> tuple[idmzoo.Spec, int, int]:
    """The spec, batch size and resolution of a named configuration or a spec file."""
    if config in CONFIGS:
        path, overrides, batch, resolution = CONFIGS[config]
        data = json.loads((ROOT / path).read_text()) | overrides
        return idmzoo.load_spec(data), batch, resolution
    spec = idmzoo.load_spec(config)
    return spec, 2, spec.image_size or 64


class Bench:
    """A model, its inputs and a training-step closure for every variant."""

    def __init__(self, spec: idmzoo.Spec, batch: int, resolution: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = idmzoo.build(spec)
        for p in self.model.parameters():  # trained-like weights: zero-initialised ones are atypical
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        shape = (batch, spec.in_channels, *(resolution,) * spec.dims)
        self.x = torch.randn(shape)
        self.t = torch.randint(0, 1000, (batch,)).float()
        self.kwargs: dict[str, torch.Tensor] = {}
        if spec.num_classes is not None:
            self.kwargs["y"] = torch.randint(0, spec.num_classes, (batch,))
        if spec.family.type.endswith("superres_unet"):
            self.kwargs["low_res"] = torch.randn(batch, spec.in_channels, *(resolution // 4,) * spec.dims)

        # One copy per memory format: converting a model back and forth leaves oneDNN
        # weight caches behind that would be charged to the next variant.
        self.channels_last_model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)

    def _prepare(self, variant: Variant) -> tuple[torch.nn.Module, torch.Tensor]:
        if variant.channels_last:
            model, x = self.channels_last_model, self.x.contiguous(memory_format=torch.channels_last)
        else:
            model, x = self.model, self.x
        model.set_checkpointing(variant.checkpointing)
        return model, x

    def forward(self, variant: Variant) -> Callable[[], object]:
        """A closure running one inference forward pass."""
        model, x = self._prepare(variant)

        def run() -> object:
            with idmzoo.attention_backend(variant.attention), torch.inference_mode():
                return model(x, self.t, **self.kwargs)

        return run

    def train_step(self, variant: Variant) -> Callable[[], object]:
        """A closure running forward and backward of a squared-error loss.

        The gradients are released at the end, so every step starts from the same memory.
        """
        model, x = self._prepare(variant)

        def run() -> object:
            with idmzoo.attention_backend(variant.attention):
                model(x, self.t, **self.kwargs).square().mean().backward()
            model.zero_grad(set_to_none=True)

        return run

    def flops(self) -> int:
        """FLOPs of one training step of the model (no recomputation), by the flop counter."""
        with FlopCounterMode(display=False) as counter:
            self.train_step(VARIANTS["reference"])()
        return counter.get_total_flops()


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def dense_matmul_flops(size: int = 2048) -> float:
    """FLOP/s of one float32 ``size x size`` matmul on this machine, now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / _seconds(lambda: a @ b)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run(config: str, batch: int | None, resolution: int | None, variants: list[str], repeats: int) -> dict:
    """Measure every variant and return the figures (also printed)."""
    spec, default_batch, default_resolution = benchmark_spec(config)
    batch, resolution = batch or default_batch, resolution or default_resolution
    bench = Bench(spec, batch, resolution)
    chosen = [VARIANTS[name] for name in ["reference", *(v for v in variants if v != "reference")]]
    times: dict[str, dict[str, list[float]]] = {v.name: {"forward": [], "train": []} for v in chosen}
    matmul: list[float] = []
    for v in chosen:  # warm-up: one-time kernel selection and allocator growth
        bench.forward(v)(), bench.train_step(v)()
    for _ in range(repeats):
        matmul.append(dense_matmul_flops())
        for v in chosen:
            times[v.name]["forward"].append(_seconds(bench.forward(v)))
            times[v.name]["train"].append(_seconds(bench.train_step(v)))
    peaks = {v.name: peak_allocated_bytes(bench.train_step(v)) for v in chosen}
    flops = bench.flops()
    best_matmul = max(matmul)
    result = {
        "config": config,
        "batch": batch,
        "resolution": resolution,
        "parameters": sum(p.numel() for p in bench.model.parameters()),
        "train_flops": flops,
        "matmul_flops_per_s": best_matmul,
        "machine": machine(),
        "variants": {},
    }
    ref = times["reference"]
    base = times["default"] if "default" in times else ref
    base_peak = peaks["default"] if "default" in peaks else peaks["reference"]
    for v in chosen:
        fwd, train = min(times[v.name]["forward"]), min(times[v.name]["train"])
        result["variants"][v.name] = {
            "forward_s": fwd,
            "train_s": train,
            "train_median_s": statistics.median(times[v.name]["train"]),
            "peak_train_bytes": peaks[v.name],
            "forward_ratio": fwd / min(ref["forward"]),
            "train_ratio": train / min(ref["train"]),
            "memory_ratio": peaks[v.name] / peaks["reference"],
            "train_vs_default": train / min(base["train"]),
            "memory_vs_default": peaks[v.name] / base_peak,
            "flops_per_s": flops / train,
            "matmul_fraction": flops / train / best_matmul,
        }
    return result


def print_table(result: dict) -> None:
    """The figures as a Markdown table."""
    m = result["machine"]
    print(
        f"{result['config']}: batch {result['batch']}, {result['resolution']}px, "
        f"{result['parameters'] / 1e6:.1f}M parameters, {result['train_flops'] / 1e9:.1f} GFLOP per training step"
    )
    print(
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; "
        f"dense matmul {result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"
    )
    print("ratios: ×ref against the reference-style path, ×def against the default (checkpointing off)")
    print(
        "| variant | forward s | ×ref | fwd+bwd s | ×ref | ×def | peak MiB | ×ref | ×def | GFLOP/s | of matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in result["variants"].items():
        print(
            f"| {name} | {r['forward_s']:.3f} | {r['forward_ratio']:.2f} | {r['train_s']:.3f} | "
            f"{r['train_ratio']:.2f} | {r['train_vs_default']:.2f} | {r['peak_train_bytes'] / 2**20:.0f} | "
            f"{r['memory_ratio']:.2f} | {r['memory_vs_default']:.2f} | "
            f"{r['flops_per_s'] / 1e9:.1f} | {r['matmul_fraction']:.0%} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10", help=f"{' | '.join(CONFIGS)} | a spec file")
    parser.add_argument("--batch", type=int, help="batch size (default: the configuration's)")
    parser.add_argument("--resolution", type=int, help="input side length (default: the configuration's)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose among {', '.join(VARIANTS)}")
    result = run(args.config, args.batch, args.resolution, args.variants.split(","), args.repeats)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
