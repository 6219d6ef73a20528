"""Large transfer sets (issue 29.5): what a pool 10× the labelled set costs a training step
with a cached teacher, and what memory a pool takes held in memory (.npz) or memory-mapped
(.npy).

The built-in recipe (700 labelled MNIST digits, a LeNet teacher, teacher.cache: true, no
augmentation so the cache is read, not scored live) in fresh processes of the console script,
each way in turn, ``--rounds`` times (ABC CBA ...):

- ``none``: no transfer set (the labelled digits alone);
- ``npz``: a pool of ``--pool-rows`` digits (the bundled rest, repeated with a little noise) held
  in memory;
- ``npy``: the same pool memory-mapped.

Per way: the distilled student's seconds per optimizer step (its phase's seconds over its steps,
from metrics.jsonl) and the process's anonymous memory (RssAnon, sampled every 0.1 s: what the
process itself holds; file pages of a mapped pool are the page cache's, given back under
pressure). Writes bench/results/transfer_pool.md and .json.

    python bench/transfer_pool.py --pool-rows 7000 --rounds 2
    python bench/transfer_pool.py --pool-rows 200000 --rounds 1 --name transfer_pool_large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from kdistill.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
KDISTILL = Path(sys.executable).with_name("kdistill")
COMMON = [
    "data.unlabelled=null",
    "teacher.data=null",
    "teacher.epochs=3",
    "train.epochs=2",
    "train.augment=none",
    "teacher.augment=none",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def make_pool(directory: Path, rows: int) -> None:
    """``rows`` digits in their natural range 0..1: the bundled rest, tiled, with noise."""
    rest = load_dataset("mnist", subset=1000, rest=True)
    identity = rest.identity["normalise"]
    natural = rest.unlabelled.numpy() * identity["std"] + identity["mean"]
    picks = np.random.default_rng(0).integers(0, len(natural), size=rows)
    noise = np.random.default_rng(1).normal(0, 0.02, size=(rows, *natural.shape[1:]))
    pool = np.clip(natural[picks] + noise, 0, 1).astype(np.float32)
    np.save(directory / "pool.npy", pool)
    np.savez(directory / "pool.npz", x=pool)


def anonymous_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def one_run(way: str, directory: Path, name: str) -> dict:
    pool = [] if way == "none" else [f"data.unlabelled={directory / f'pool.{way}'}"]
    command = [str(KDISTILL), "run", *COMMON, *pool, f"output.dir={directory / 'runs'}"]
    command += [f"name={name}", "--overwrite"]
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], anonymous_kib(child.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, _ = child.communicate()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{way}: kdistill run failed\n{output[-2000:]}")
    records = [
        json.loads(line)
        for line in (directory / "runs" / name / "metrics.jsonl").read_text().splitlines()
    ]
    student = [r for r in records if r["phase"] == "student"]
    steps = student[-1]["step"]
    seconds = sum(r["seconds"] for r in student)
    return {
        "way": way,
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "peak_anonymous_mib": peak[0] / 1024,
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-rows", type=int, default=7000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ways", nargs="+", default=["none", "npz", "npy"])
    parser.add_argument("--name", default="transfer_pool")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as out:
        directory = Path(out)
        make_pool(directory, args.pool_rows)
        for r in range(args.rounds):
            order = args.ways if r % 2 == 0 else list(reversed(args.ways))
            for way in order:
                runs.append({"round": r, **one_run(way, directory, f"{way}{r}")})
                print(runs[-1], flush=True)
    by_way = {w: [x for x in runs if x["way"] == w] for w in args.ways}
    base = by_way.get("none")
    lines = [
        f"# Large transfer sets: step cost and memory ({args.pool_rows:,}-digit pool)",
        "",
        f"Command: `python bench/transfer_pool.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, 1 torch thread per run, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each way in a fresh process, "
        "in turn (ABC CBA).",
        "",
        "Built-in recipe, 700 labelled digits, cached LeNet teacher, no augmentation; the pool "
        "is the bundled rest, tiled with noise. Seconds per step: the distilled student's phase "
        "over its optimizer steps. Memory: the process's peak anonymous RSS (what it holds "
        "itself; a mapped file's pages are page cache).",
        "",
        "| transfer set | steps | ms per step (median) | × no pool (median of rounds) "
        "| peak anonymous memory (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, rows in by_way.items():
        ms = statistics.median(x["seconds_per_step"] * 1000 for x in rows)
        ratio = "1" if way == "none" else "–"  # no run without a pool to compare with
        if way != "none" and base:  # per round, against that round's run without a pool
            paired = [x["seconds_per_step"] / b["seconds_per_step"] for x, b in zip(rows, base)]
            ratio = f"{statistics.median(paired):.2f}"
        memory = statistics.median(x["peak_anonymous_mib"] for x in rows)
        shown = {"none": "none", "npz": "in memory (.npz)", "npy": "memory-mapped (.npy)"}[way]
        lines.append(f"| {shown} | {rows[0]['steps']:,} | {ms:.2f} | {ratio} | {memory:,.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"args": vars(args), "runs": runs}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
