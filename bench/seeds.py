"""The default recipe (or any recipe) over several seeds: mean ± std test accuracy of the
teacher, the scratch student and the distilled student, and the run time of each run.

    python bench/seeds.py                      # built-in MNIST recipe, seeds 0-4
    python bench/seeds.py configs/x.yaml --seeds 3 -- train.epochs=10

Writes bench/results/seeds_<name>.md and .json with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.pipeline import run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in range(args.seeds):
            recipe = load_config(args.recipe, [*args.overrides, f"train.seed={seed}", f"output.dir={out}", f"name=seed{seed}", "output.progress=false"])
            started = time.perf_counter()
            summary = run(recipe, echo=lambda *_: None)
            summary["wall_seconds"] = time.perf_counter() - started
            runs.append(summary)
            print(
                f"seed {seed}: teacher {summary['teacher']['accuracy']:.4f} scratch {summary['scratch']['accuracy']:.4f} "
                f"student {summary['student']['accuracy']:.4f} ({summary['wall_seconds']:.0f} s)", flush=True,
            )

    def stat(role):
        values = [100 * r[role]["accuracy"] for r in runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    wins = sum(r["student"]["accuracy"] > r["scratch"]["accuracy"] for r in runs)
    recipe_name = load_config(args.recipe).name
    command = "python bench/seeds.py " + " ".join(sys.argv[1:])
    first = runs[0]
    lines = [
        f"# {recipe_name}: {args.seeds} seeds",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "",
        "| model | parameters | test accuracy (mean ± std, %) |",
        "|---|---:|---:|",
    ]
    for role, title in (("teacher", "teacher"), ("scratch", "student from scratch"), ("student", "distilled student")):
        mean, std = stat(role)
        lines.append(f"| {title} ({first[role]['model']}) | {first[role]['params']:,} | {mean:.2f} ± {std:.2f} |")
    gains = [100 * (r["student"]["accuracy"] - r["scratch"]["accuracy"]) for r in runs]
    lines += [
        "",
        f"Distilled beats scratch in {wins} of {len(runs)} seeds; gain {statistics.mean(gains):+.2f} points on average "
        f"(min {min(gains):+.2f}). Run time per run: {statistics.mean(r['wall_seconds'] for r in runs):.0f} s "
        f"(max {max(r['wall_seconds'] for r in runs):.0f} s), teacher trained in every run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"seeds_{recipe_name}.md").write_text(text)
    (RESULTS / f"seeds_{recipe_name}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
