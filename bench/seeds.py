"""The default recipe (or any recipe) over several seeds: a thin caller of ``kdistill run
--seeds`` (kdistill.run.seeds) that keeps its table, with the command and the machine, in
bench/results/: mean ± sd of the task's test metrics per role, each seed's paired verdict, and
the tests across seeds.

    python bench/seeds.py                      # built-in MNIST recipe, seeds 0-4
    python bench/seeds.py configs/x.yaml --seeds 3 -- train.epochs=10

Writes bench/results/seeds_<name>.md and .json (the seeds summary and each seed's summary.json)
with the command that made them. The runs themselves go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from kdistill.report import to_markdown
from kdistill.run.config import load_config
from kdistill.run.seeds import run_seeds, seeds_blocks

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_intermixed_args()  # overrides after --seeds N (or after --) too
    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():
        args.overrides, args.recipe = (
            [args.recipe, *args.overrides],
            None,
        )  # overrides of the built-in recipe

    with tempfile.TemporaryDirectory() as out:
        recipe = load_config(
            args.recipe,
            [
                *args.overrides,
                f"train.seeds={args.seeds}",
                f"output.dir={out}",
                "output.progress=false",
            ],
        )
        quiet = lambda line="": print(line, flush=True) if str(line).startswith("seed ") else None
        result = run_seeds(recipe, echo=quiet)
        runs = [json.loads((Path(r["run"]) / "summary.json").read_text()) for r in result["runs"]]

    command = "python bench/seeds.py " + " ".join(sys.argv[1:])
    blocks = seeds_blocks(result)
    machine = (
        f"Command: `{command}`  \nMachine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Run time per run: "
        + ", ".join(f"{r['seconds']:.0f} s" for r in runs)
        + "."
    )
    text = to_markdown([blocks[0], ("paragraph", machine), *blocks[1:]])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"seeds_{recipe.name}.md").write_text(text)
    (RESULTS / f"seeds_{recipe.name}.json").write_text(
        json.dumps({"command": command, "seeds": result, "runs": runs}, indent=2)
    )


if __name__ == "__main__":
    main()
