"""Checkpointing modes against none: peak memory and time of a training step, in one run.

The issue's figure for selective checkpointing is taken here: the CIFAR-10 configuration
(``specs/idm_cifar10_uncond.json``) at batch 16, ``"none"`` against ``"selective"`` (and
``"all"`` for comparison).  Only training steps are timed, interleaved round by round in
alternating order (ABBA), so a slow drift of a shared machine's speed cancels out.  Two
time ratios are printed: of the best rounds (the least disturbed by other work), and the
median over the rounds of each round's own ratio to ``"none"``, with its spread; and the
load average.

Usage::

    python benchmarks/bench_checkpointing.py                       # cifar10, batch 16
    python benchmarks/bench_checkpointing.py --modes none,selective --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_blocks import VARIANTS, Bench, benchmark_spec, machine
from memory import peak_allocated_bytes

_VARIANT_OF_MODE = {
    "none": "default",
    "attention": "ckpt_attention",
    "all": "ckpt_all",
    "selective": "ckpt_selective",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10", help="a bench_blocks.py configuration or a spec file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--modes", default="none,selective,all", help=f"of {', '.join(_VARIANT_OF_MODE)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, _, resolution = benchmark_spec(args.config)
    bench = Bench(spec, args.batch, resolution)
    modes = ["none", *(m for m in args.modes.split(",") if m != "none")]

    def step(mode: str):  # the model is shared: making the closure applies the mode
        return bench.train_step(VARIANTS[_VARIANT_OF_MODE[mode]])

    peaks = {mode: peak_allocated_bytes(step(mode)) for mode in modes}  # also the warm-up
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(args.repeats):
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            work = step(mode)
            start = time.perf_counter()
            work()
            times[mode].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    m = machine()
    print(
        f"{args.config}: batch {args.batch}, {resolution}px; {m['cpu']}, {m['threads']} threads, "
        f"torch {m['torch']}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        "| checkpointing | fwd+bwd s (best) | ×none (best) | ×none (median of rounds) | rounds' range "
        "| peak MiB | ×none |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        ratios = [mine / base for mine, base in zip(times[mode], times["none"], strict=True)]
        best = min(times[mode])
        print(
            f"| {mode} | {best:.3f} | {best / min(times['none']):.3f} | {statistics.median(ratios):.3f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} | {peaks[mode] / 2**20:.0f} | {peaks[mode] / peaks['none']:.2f} |"
        )


if __name__ == "__main__":
    main()
