"""Training-step time and peak memory against resolution, default blocks vs the reference path.

Runs the attention-heavy configuration of ``bench_blocks.py`` (attention at 1/2 and 1/4 of
the input side) at inputs of 16 to 128 pixels, i.e. attention grids of 8x8 to 64x64, and
draws ``resolution.png`` (needs matplotlib) beside the figures in ``resolution.json``.

Usage::

    python benchmarks/plot_resolution.py [--resolutions 16,32,64,128] [--out benchmarks/resolution.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_blocks import run

HERE = Path(__file__).resolve().parent
VARIANTS = ["reference", "default", "ckpt_all"]
LABELS = {
    "reference": "reference-style (einsum attention)",
    "default": "idmzoo default (SDPA)",
    "ckpt_all": "idmzoo, checkpointing all blocks",
}


def sweep(resolutions: list[int], repeats: int) -> list[dict]:
    """``bench_blocks.run`` of the attention configuration at every resolution."""
    results = []
    for resolution in resolutions:
        result = run("attention", None, resolution, VARIANTS, repeats)
        results.append(result)
        times = ", ".join(
            f"{k} {v['train_s']:.2f}s/{v['peak_train_bytes'] / 2**20:.0f}MiB"
            for k, v in result["variants"].items()
        )
        print(f"{resolution}px (attention grid {resolution // 2}x{resolution // 2}): {times}", flush=True)
    return results


def plot(results: list[dict], out: Path) -> None:
    """Two log-log panels: fwd+bwd seconds and peak MiB against the attention grid side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [r["resolution"] // 2 for r in results]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in VARIANTS:
        time_ax.plot(grids, [r["variants"][name]["train_s"] for r in results], "o-", label=LABELS[name])
        memory_ax.plot(
            grids,
            [r["variants"][name]["peak_train_bytes"] / 2**20 for r in results],
            "o-",
            label=LABELS[name],
        )
    for ax, ylabel in (
        (time_ax, "forward+backward time (s)"),
        (memory_ax, "peak memory of a training step (MiB)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(grids, [f"{g}x{g}" for g in grids])
        ax.set_xlabel("largest attention grid (input side / 2)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    memory_ax.legend(fontsize=8)
    m = results[0]["machine"]
    fig.suptitle(
        f"attention-heavy U-Net, batch {results[0]['batch']}: {m['cpu']}, {m['threads']} threads, torch {m['torch']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="16,32,64,128", help="comma-separated input sides")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=HERE / "resolution.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = sweep([int(r) for r in args.resolutions.split(",")], args.repeats)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
