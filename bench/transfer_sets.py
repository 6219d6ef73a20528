"""Label scarcity on Rotten Tomatoes with a pretrained teacher and a transfer set (issue 29).

For each number N of labelled snippets (configs/rotten_tomatoes_transfer.yaml with
``data.options.labelled: N``; the other snippets of the training split are the transfer set,
the test split the same 1,275 snippets for every N):

- teacher: all-MiniLM-L6-v2 fine-tuned on the N snippets once (the first seed's run), then
  reused by every seed (``teacher.checkpoint``), its outputs over both sets cached once;
- scratch: the text CNN on the N labelled snippets alone;
- KD labelled-only: the text CNN distilled from the teacher on the N labelled snippets alone
  (``kdistill.distill`` without a transfer set);
- KD + transfer set: distilled over the N labelled plus the transfer set, without its labels;
- pseudo-labels: trained on the N labels plus the teacher's hard labels of the transfer set.

Every student takes the same optimizer steps (epochs × ⌈(N + U) / batch⌉): the scratch and the
KD labelled-only student draw their N labelled snippets again and again. Rows 1, 2, 4 and 5
are one recipe run per seed; row 3 is ``kdistill.distill`` with a ``DataLoader`` whose sampler
draws N + U snippets an epoch. Each seed's wins are its own paired test on the test snippets
(bootstrap interval and McNemar's exact test, ``kdistill.evaluation.paired``).

    python bench/transfer_sets.py --labelled 1000 --seeds 5

Writes bench/results/transfer_sets.md and .json (with the command, the machine and the run
times); the runs go to runs/bench_transfer_sets/ (kept: a second call reuses the teachers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

import kdistill
from kdistill.evaluation.classification import evaluate
from kdistill.evaluation.paired import compare
from kdistill.io.weights import load_weights
from kdistill.models import create_model
from kdistill.run.config import load_config
from kdistill.run.pipeline import run
from kdistill.run.plan import load_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "rotten_tomatoes_transfer.yaml"
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "bench_transfer_sets"
ROWS = ("teacher", "scratch", "kd_labelled", "kd_transfer", "pseudo_labels")
TITLES = {
    "teacher": "teacher (MiniLM-L6, fine-tuned on N)",
    "scratch": "scratch (N labelled)",
    "kd_labelled": "KD, labelled only",
    "kd_transfer": "KD + transfer set",
    "pseudo_labels": "pseudo-labels (self-training)",
}


TAG = [""]  # --tag: appended to the run names, so that another student's runs keep their own


def teacher_epochs(labelled: int) -> int:
    """About 100 fine-tuning updates of 32 snippets whatever N (1 epoch of 3,000 snippets)."""
    return max(1, min(12, math.ceil(3000 / labelled)))


def transfer_run(labelled: int, seed: int, teacher: Path | None, extra: list[str]) -> Path:
    """The recipe for one N and seed: teacher, scratch, pseudo-labels, KD + transfer set."""
    overrides = [
        f"name=n{labelled}_seed{seed}{TAG[0]}",
        f"output.dir={WORK}",
        f"data.options={{max_length: 48, labelled: {labelled}}}",
        f"teacher.epochs={teacher_epochs(labelled)}",
        f"train.seed={seed}",
        "output.plots=false",
        "output.progress=false",
        *([f"teacher.checkpoint={teacher}"] if teacher else []),
        *extra,
    ]
    recipe = load_config(RECIPE, overrides)
    directory = WORK / recipe.name
    done = (directory / "summary.json").is_file() and (
        load_config(directory / "config.yaml", code_beside=False).model_dump()
        == recipe.model_dump()
    )
    if not done:  # a run of these very settings is reused; one of others is replaced
        run(recipe, overwrite=True, echo=lambda *_: None)
    return directory


def labelled_only(directory: Path, recipe, test_loader) -> dict:
    """KD on the N labelled snippets alone, drawn N + U times an epoch: the recipe's settings
    through ``kdistill.distill``, the teacher of that run, its outputs cached once per N."""
    splits = load_data(recipe)
    t = recipe.train
    labelled, draws = splits.train, len(splits.train) + len(splits.unlabelled)
    teacher = create_model("minilm_l6", num_classes=2, input_shape=(48,))
    load_weights(teacher, directory / "checkpoints" / "teacher.safetensors")
    torch.manual_seed(t.seed)
    student = create_model(
        recipe.student.model, num_classes=2, input_shape=(48,), **recipe.student.kwargs
    )
    generator = torch.Generator().manual_seed(t.seed)
    sampler = RandomSampler(labelled, num_samples=draws, generator=generator)
    loader = DataLoader(labelled, batch_size=t.batch_size, sampler=sampler, generator=generator)
    started = time.perf_counter()
    settings = ("epochs", "lr", "optimizer", "weight_decay", "schedule", "seed", "batch_size")
    kdistill.distill(
        teacher,
        student,
        loader,
        method="kd",
        temperature=recipe.distill.temperature,
        alpha=recipe.distill.alpha,
        train={name: getattr(t, name) for name in settings},
        cache=WORK / ".labelled_cache" / f"n{len(labelled)}",
        progress=False,
    )
    seconds = time.perf_counter() - started
    scored = evaluate(student, test_loader, outcomes=True)
    return {"accuracy": scored["accuracy"], "outcomes": scored["outcomes"], "seconds": seconds}


def seed_row(labelled: int, seed: int, teacher: Path | None, extra: list[str]) -> dict:
    started = time.perf_counter()
    directory = transfer_run(labelled, seed, teacher, extra)
    summary = json.loads((directory / "summary.json").read_text())
    recipe = load_config(directory / "config.yaml", code_beside=False)
    splits = load_data(recipe)
    test_loader = DataLoader(splits.test, batch_size=256)
    student = create_model(
        recipe.student.model, num_classes=2, input_shape=(48,), **recipe.student.kwargs
    )
    load_weights(student, directory / "checkpoints" / "student.safetensors")
    transfer = evaluate(student, test_loader, outcomes=True)
    alone = labelled_only(directory, recipe, test_loader)
    kd_vs = compare(transfer["outcomes"], alone["outcomes"], higher_is_better=True, mcnemar=True)
    accuracy = {
        "teacher": summary["teacher"]["accuracy"],
        "scratch": summary["scratch"]["accuracy"],
        "kd_labelled": alone["accuracy"],
        "kd_transfer": summary["student"]["accuracy"],
        "pseudo_labels": summary["pseudo_labels"]["accuracy"],
    }
    assert abs(transfer["accuracy"] - accuracy["kd_transfer"]) < 1e-6  # the run's own student
    comparisons = summary["comparisons"]
    return {
        "seed": seed,
        "accuracy": accuracy,
        "paired": {
            "kd_transfer_vs_scratch": comparisons["student_vs_scratch"],
            "kd_transfer_vs_pseudo_labels": comparisons["student_vs_pseudo_labels"],
            "kd_transfer_vs_kd_labelled": kd_vs,
        },
        "sizes": summary["data"]["sizes"],
        "steps_per_epoch": summary["students"]["budget"]["steps_per_epoch"],
        "epochs": summary["students"]["epochs"],
        "teacher_source": summary["teacher"].get("source"),
        "seconds": {
            "recipe_run": summary["seconds"],
            "teacher_train": summary["teacher"]["train_seconds"],
            **{
                role: summary[role]["train_seconds"]
                for role in ("scratch", "pseudo_labels", "student")
            },
            "kd_labelled": round(alone["seconds"], 1),
            "seed_total": round(time.perf_counter() - started, 1),
        },
        "run": str(directory.relative_to(ROOT)),
    }


def aggregate(seeds: list[dict]) -> dict:
    def spread(values: list[float]) -> dict:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": sd}

    table = {row: spread([100 * s["accuracy"][row] for s in seeds]) for row in ROWS}
    gaps = [
        (s["accuracy"]["kd_transfer"] - s["accuracy"]["scratch"])
        / (s["accuracy"]["teacher"] - s["accuracy"]["scratch"])
        for s in seeds
    ]
    wins = {
        against: {
            "significant": sum(s["paired"][f"kd_transfer_vs_{against}"]["better"] for s in seeds),
            "higher": sum(s["accuracy"]["kd_transfer"] > s["accuracy"][against] for s in seeds),
        }
        for against in ("scratch", "kd_labelled", "pseudo_labels")
    }
    over_labelled = [
        100 * (s["accuracy"]["kd_transfer"] - s["accuracy"]["kd_labelled"]) for s in seeds
    ]
    return {
        "test_accuracy_percent": table,
        "gap_recovered_percent": {
            **spread([100 * g for g in gaps]),
            "of_means": 100
            * (table["kd_transfer"]["mean"] - table["scratch"]["mean"])
            / (table["teacher"]["mean"] - table["scratch"]["mean"]),
        },
        "kd_transfer_minus_kd_labelled_points": spread(over_labelled),
        "wins_of_kd_transfer": wins,
        "seeds": len(seeds),
    }


def markdown(results: dict) -> str:
    lines = [
        "# Transfer sets: label scarcity on Rotten Tomatoes (issue 29)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; {results['date']}; torch {results['torch']}, "
        f"{results['threads']} thread(s).",
        "",
        "Test accuracy (%) on the fixed 1,275-snippet test split, mean ± std over seeds "
        "(train.seed 0..k-1: the students' initialisation and data order; the labelled subset "
        "and the teacher are the same for every seed of an N). Every student takes the same "
        "optimizer steps: epochs × ⌈(N + U) / 32⌉.",
        "",
        "| N labelled | transfer set | steps | "
        + " | ".join(TITLES[r] for r in ROWS)
        + " | gap recovered | KD+T − KD labelled | KD+T wins (paired / higher) | seeds |",
        "|---:|---:|---:|" + "---:|" * len(ROWS) + "---:|---:|---|---:|",
    ]
    for n, block in results["by_labelled"].items():
        agg, first = block["aggregate"], block["seeds"][0]
        cells = [
            f"{agg['test_accuracy_percent'][r]['mean']:.2f} ± "
            f"{agg['test_accuracy_percent'][r]['std']:.2f}"
            for r in ROWS
        ]
        gap = agg["gap_recovered_percent"]
        delta = agg["kd_transfer_minus_kd_labelled_points"]
        wins = agg["wins_of_kd_transfer"]
        k = agg["seeds"]
        won = "; ".join(
            f"vs {name}: {w['significant']}/{k} / {w['higher']}/{k}" for name, w in wins.items()
        )
        steps = first["steps_per_epoch"] * first["epochs"]
        lines.append(
            f"| {int(n):,} | {first['sizes']['unlabelled']:,} | {steps:,} | "
            + " | ".join(cells)
            + f" | {gap['mean']:.0f} % ± {gap['std']:.0f} (of means {gap['of_means']:.0f} %)"
            f" | {delta['mean']:+.2f} ± {delta['std']:.2f} | {won} | {k} |"
        )
    lines += [
        "",
        "Gap recovered: (KD + transfer − scratch) / (teacher − scratch), per seed, then mean ± "
        "std (and from the mean accuracies). Wins: seeds on which KD + transfer set is better "
        "by its paired test (95 % bootstrap interval above zero) / simply higher.",
        "",
        "## Per seed",
        "",
        "| N | seed | " + " | ".join(ROWS) + " | seconds (recipe run; KD labelled-only) |",
        "|---:|---:|" + "---:|" * len(ROWS) + "---|",
    ]
    for n, block in results["by_labelled"].items():
        for s in block["seeds"]:
            acc = " | ".join(f"{100 * s['accuracy'][r]:.2f}" for r in ROWS)
            sec = s["seconds"]
            lines.append(
                f"| {int(n):,} | {s['seed']} | {acc} | {sec['recipe_run']:.0f} s; "
                f"{sec['kd_labelled']:.0f} s |"
            )
    lines += ["", *results.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, nargs="+", default=[1000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--name", default="transfer_sets")
    parser.add_argument("--note", action="append", default=[], help="a line for the results")
    parser.add_argument("--tag", default="", help="appended to the run names (another student)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every recipe run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = {
        "command": "python " + " ".join(["bench/transfer_sets.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "by_labelled": {},
        "notes": args.note,
    }
    TAG[0] = args.tag
    path = RESULTS / args.name
    for labelled in args.labelled:
        seeds, teacher = [], None
        for seed in range(args.seeds):
            seeds.append(seed_row(labelled, seed, teacher, args.overrides))
            teacher = teacher or ROOT / seeds[0]["run"] / "checkpoints" / "teacher.safetensors"
            block = {"seeds": seeds, "aggregate": aggregate(seeds)}
            results["by_labelled"][str(labelled)] = block
            results["seconds"] = round(time.perf_counter() - started, 1)
            RESULTS.mkdir(parents=True, exist_ok=True)  # after every seed: a partial table
            path.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
            path.with_suffix(".md").write_text(markdown(results))
            print(f"N={labelled} seed {seed}: {seeds[-1]['accuracy']}", flush=True)


if __name__ == "__main__":
    main()
