"""Channels-last against the default NCHW layout for the default teacher (LeNet) on the CPU: a
training epoch (batch 64, Adam) and an inference pass (batch 512, the cache's and evaluation's
size) over 3,500 inputs of 1×28×28, the bundled MNIST's training split. ABBA-alternated rounds
in one process; reported as the median over rounds of the per-round ratio channels-last / NCHW
(kdistill.training.memory_format converts the weights; the inputs stay as the loader makes them).

    python bench/memory_format.py            # ~2 minutes; writes
                                             # bench/results/memory_format.{md,json}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdistill import create_model

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 3_500


def train_epoch(model, x, y) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for i in range(0, len(x), 64):
        loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


@torch.no_grad()
def inference_pass(model, x, y) -> float:
    model.eval()
    started = time.perf_counter()
    for i in range(0, len(x), 512):
        model(x[i : i + 512])
    return time.perf_counter() - started


def timed(way: str, run, x, y) -> float:
    torch.manual_seed(0)
    model = create_model("lenet")
    if way == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return run(model, x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(SAMPLES, 1, 28, 28), torch.randint(0, 10, (SAMPLES,))
    results = {}
    for what, run in (("training epoch", train_epoch), ("inference pass", inference_pass)):
        timed("nchw", run, x, y)  # warm-up: oneDNN primitives, allocator
        timed("channels_last", run, x, y)
        seconds = {"nchw": [], "channels_last": []}
        for r in range(args.rounds):
            order = ("nchw", "channels_last") if r % 2 == 0 else ("channels_last", "nchw")
            for way in (*order, *reversed(order)):  # ABBA
                seconds[way].append(timed(way, run, x, y))
        ratios = [c / n for c, n in zip(seconds["channels_last"], seconds["nchw"])]
        results[what] = {
            "nchw_s": statistics.median(seconds["nchw"]),
            "channels_last_s": statistics.median(seconds["channels_last"]),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    command = f"python bench/memory_format.py --rounds {args.rounds} --threads {args.threads}"
    machine = f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}"
    lines = [
        "# Channels-last vs NCHW: LeNet (the default teacher) on the CPU",
        "",
        f"`{command}`; {machine}; {SAMPLES:,} inputs of "
        f"1×28×28; median over {2 * args.rounds} timings per way.",
        "",
        "| what | NCHW (s) | channels-last (s) | ratio (median of rounds) | range |",
        "|---|---:|---:|---:|---:|",
    ]
    for what, r in results.items():
        lines.append(
            f"| {what} | {r['nchw_s']:.3f} | "
            f"{r['channels_last_s']:.3f} | {r['ratio_median']:.2f} | "
            f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_format.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "memory_format.json").write_text(
        json.dumps({"command": command, "machine": machine, "results": results}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
