"""One seed of a recipe variant (issue 18): teacher, scratch and distilled student accuracy and the
gap recovered, (distilled - scratch) / (teacher - scratch), appended as one JSON line to
bench/results/function_matching.jsonl. The teacher comes from the store under --out, so
variants of one seed train it once. Variants are overrides of configs/mnist_hinton.yaml, the
built-in recipe when the records were made.

    python bench/fm_explore.py mixup60 train.augment=shift train.mix=mixup distill.alpha=1 \\
        distill.temperature=1 train.epochs=60 teacher.cache=true
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from kdistill.run.config import load_config
from kdistill.run.pipeline import run

RESULTS = Path(__file__).resolve().parent / "results" / "function_matching.jsonl"
BASE = Path(__file__).resolve().parents[1] / "configs" / "mnist_hinton.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default="runs/fm_explore")
    args = parser.parse_args()
    recipe = load_config(
        BASE,
        [
            *args.overrides,
            f"output.dir={args.out}",
            f"name={args.name}",
            "output.progress=false",
            "output.latency=false",
            "output.plots=false",
        ],
    )
    started = time.perf_counter()
    summary = run(recipe, echo=lambda *_: None)
    wall = time.perf_counter() - started
    teacher, scratch, student = (
        100 * summary[role]["accuracy"] for role in ("teacher", "scratch", "student")
    )
    record = {
        "name": args.name,
        "overrides": args.overrides,
        "seed": recipe.train.seed,
        "teacher": round(teacher, 2),
        "scratch": round(scratch, 2),
        "student": round(student, 2),
        "gap_recovered": round((student - scratch) / (teacher - scratch), 3),
        "wall_seconds": round(wall),
        "cpu_seconds": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime),
        "train_seconds": {
            role: summary[role]["train_seconds"] for role in ("teacher", "scratch", "student")
        },
    }
    print(json.dumps(record), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
