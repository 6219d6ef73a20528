"""The default recipe (or any recipe) over several seeds: mean ± std of the task's test metrics
(accuracy; HR@10, NDCG@10 and RMSE for recommendation) for the teacher, the scratch student and
the distilled student, and the run time of each run.

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

from kdistill.run.config import load_config
from kdistill.run.pipeline import run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_intermixed_args()  # overrides after --seeds N (or after --) too
    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():
        args.overrides, args.recipe = [args.recipe, *args.overrides], None  # overrides of the built-in recipe

    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in range(args.seeds):
            recipe = load_config(args.recipe, [*args.overrides, f"train.seed={seed}", f"output.dir={out}", f"name=seed{seed}", "output.progress=false"])
            started = time.perf_counter()
            summary = run(recipe, echo=lambda *_: None)
            summary["wall_seconds"] = time.perf_counter() - started
            runs.append(summary)
            task = summary["task"]  # metrics (headline first), their directions, which are in %
            headline = task["metrics"][0]
            print(
                f"seed {seed}: {headline} teacher {summary['teacher'][headline]:.4f} scratch {summary['scratch'][headline]:.4f} "
                f"student {summary['student'][headline]:.4f} ({summary['wall_seconds']:.0f} s)", flush=True,
            )

    scale = {metric: 100.0 for metric in task["percent"]}

    def stat(role, metric):
        values = [scale.get(metric, 1.0) * r[role][metric] for r in runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def better(a, b, metric):
        return a > b if task["higher_is_better"].get(metric, True) else a < b

    wins = sum(better(r["student"][headline], r["scratch"][headline], headline) for r in runs)
    recipe_name = load_config(args.recipe, args.overrides).name  # name= among the overrides names the results
    command = "python bench/seeds.py " + " ".join(sys.argv[1:])
    first = runs[0]
    lines = [
        f"# {recipe_name}: {args.seeds} seeds",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "",
        "| model | parameters | "
        + " | ".join(f"test {m} (mean ± std{', %' if m in scale else ''})" for m in task["metrics"]) + " |",
        "|---|---:|" + "---:|" * len(task["metrics"]),
    ]
    for role, title in (("teacher", "teacher"), ("scratch", "student from scratch"), ("student", "distilled student")):
        cells = []
        for metric in task["metrics"]:
            mean, std = stat(role, metric)
            digits = 2 if metric in scale else 4
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {title} ({first[role]['model']}) | {first[role]['params']:,} | " + " | ".join(cells) + " |")
    gains = [scale.get(headline, 1.0) * (r["student"][headline] - r["scratch"][headline]) for r in runs]
    per_seed = ", ".join(f"{g:+.4g}" for g in gains)
    lines += [
        "",
        f"Distilled beats scratch on {headline} in {wins} of {len(runs)} seeds; difference {statistics.mean(gains):+.4g} "
        f"on average (per seed: {per_seed}). Run time per run: {statistics.mean(r['wall_seconds'] for r in runs):.0f} s "
        f"(max {max(r['wall_seconds'] for r in runs):.0f} s), teacher trained in every run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"seeds_{recipe_name}.md").write_text(text)
    (RESULTS / f"seeds_{recipe_name}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
