"""What ``fit`` costs per step on the host: a model whose compute is negligible (Linear 8 → 4,
batch 16), trained one epoch by a plain PyTorch loop (cross-entropy, Adam, cosine schedule) and
by ``kdistill.fit`` with the same loss, in ABBA-alternated rounds in one process; reported as the
median over rounds of microseconds per step and of the per-round difference. On a GPU this
difference is what a step with little compute cannot hide (throughput_cuda.md: 0.65 of a plain
loop on the tutorial pair).

A third way runs ``fit`` with Accelerate's per-step package probe left uncached (what
``kdistill.training.acceleration._cache_accelerate_probe`` fixes), in the same rounds, so the saving
is measured against the same noise.

    python bench/step_overhead.py            # ~1 minute; writes
                                             # bench/results/step_overhead.{md,json}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller, Term
from kdistill.data.base import ArrayDataset
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import train_loop

SAMPLES, BATCH = 4096, 16
STEPS = SAMPLES // BATCH
RESULTS = Path(__file__).parent / "results"


def loader(x, y):
    return DataLoader(
        ArrayDataset(x, y),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )


def plain(x, y) -> float:
    model = nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    started = time.perf_counter()
    for batch in loader(x, y):
        loss = nn.functional.cross_entropy(model(batch["input"]), batch["target"])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / STEPS


def kdistill_fit(x, y, accelerator, *, probe) -> float:
    import accelerate.optimizer

    accelerate.optimizer.is_lomo_available = probe
    distiller = Distiller(nn.Linear(8, 4), [Term("ce", "ce", teacher=None)])
    started = time.perf_counter()
    train_loop(distiller, loader(x, y), epochs=1, accelerator=accelerator, progress=False)
    return (time.perf_counter() - started) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(SAMPLES, 8), torch.randint(0, 4, (SAMPLES,))
    accelerator = make_accelerator("cpu")  # caches Accelerate's probe
    import accelerate.optimizer

    cached = accelerate.optimizer.is_lomo_available
    uncached = cached.__wrapped__
    ways = {
        "plain": lambda: plain(x, y),
        "fit": lambda: kdistill_fit(x, y, accelerator, probe=cached),
        "fit, probe uncached": lambda: kdistill_fit(x, y, accelerator, probe=uncached),
    }
    for way in ways.values():
        way()  # warm-up
    rounds = []
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))  # ABBA
        rounds.append({name: ways[name]() for name in order})
    accelerate.optimizer.is_lomo_available = cached
    us = {name: 1e6 * statistics.median(r[name] for r in rounds) for name in ways}
    extra = {
        name: 1e6 * statistics.median(r[name] - r["plain"] for r in rounds)
        for name in ways
        if name != "plain"
    }
    result = {
        "steps": STEPS,
        "rounds": args.rounds,
        "threads": args.threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "us_per_step": us,
        "extra_us_per_step": extra,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Host-side cost of a training step",
        "",
        f"`python bench/step_overhead.py` ({platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.rounds} ABBA rounds of {STEPS} steps; Linear "
        f"8 → 4, batch {BATCH}: compute is negligible).",
        "",
        "| way | µs per step (median) | added to the "
        "plain loop (median of per-round differences) |",
        "|---|---:|---:|",
    ]
    for name in ways:
        lines.append(
            f"| {name} | {us[name]:.0f} | {'' if name == 'plain' else f'{extra[name]:.0f}'} |"
        )
    (RESULTS / "step_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
