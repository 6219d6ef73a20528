"""Every distillation method of the library on one teacher/student pair of the CIFAR zoo, on
Fashion-MNIST: mean ± std test accuracy over seeds, the share of the teacher–scratch gap each
method recovers, and the wall time of a run.

    python bench/methods.py                                  # default CPU budget
                                                             # (~1 h on one thread)
    python bench/methods.py --quick --methods scratch,kd     # smoke run, a couple of minutes
    python bench/methods.py --subset 0 --epochs 240 --teacher-epochs 240 --batch-size 64 \\
        --lr 0.05 --teacher-lr 0.05 --schedule step --augment shift --device cuda  # CIFAR recipes

The pair is resnet56 → resnet8 (0.86M → 0.08M parameters, 11× fewer): a student far enough
below its teacher that there is a gap to recover in a CPU budget. The data split (seed 0) and
the teacher (trained once, seed 0) are shared by every run; the seeds vary the student's
initialisation and batch order, and a method and scratch see the same ones, so their
difference is paired. Accuracy is the last epoch's, on all 10,000 official test images.

Without augmentation the teacher's outputs (logits and every tapped feature) are computed once
into a teacher cache (kdistill.teachers.cache) and read back by index, so a distillation step costs
what a student step costs; with augmentation the teacher runs live. The trained teacher is kept in
bench/.teachers/ and reused by a later run with the same teacher, data and budget.
Writes bench/results/methods.md and .json (methods_quick.* for --quick) with the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from kdistill.data import load_dataset
from kdistill.data.augment import AUGMENTATIONS, augmented
from kdistill.data.base import ArrayDataset
from kdistill.data.images import stratified_subset
from kdistill.distiller import Distiller, Teacher
from kdistill.evaluation.classification import evaluate
from kdistill.methods import PRESETS, preset_terms, teacher_taps
from kdistill.models import create_model
from kdistill.teachers.cache import CachedTeacher, build_cache
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Loop, train_loop
from kdistill.training.optimization import SCHEDULES, Optimization

RESULTS = Path(__file__).resolve().parent / "results"
TEACHERS = Path(__file__).resolve().parent / ".teachers"
METHODS = (
    "scratch",
    "kd",
    "dkd",
    "dist",
    "lskd",
    "nkd",  # logits
    "fitnet",
    "at",
    "nst",
    "vid",
    "sp",  # intermediate features
    "rkd",
    "pkt",
    "cc",
    "crd",  # relations of embeddings
)
# Which of the models' hint_layers (stage outputs, shallow to deep) each feature method compares,
# as RepDistiller does: FitNet one middle stage (its hint_layer=2), SP the last stage
# (feat[-2]), AT, NST and VID every stage (feat[1:-1]). The other methods read logits or the
# pooled embedding in front of the head (the presets' default).
FEATURE_LAYERS = {
    "fitnet": lambda layers: [layers[len(layers) // 2]],
    "sp": lambda layers: [layers[-1]],
    "at": list,
    "nst": list,
    "vid": list,
}
# DKD's β (weight of the non-target term) is tuned per pair in mdistiller's CIFAR-100 configs
# (configs/cifar100/dkd/*.yaml); other pairs keep the preset's default.
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet8"): 2.0,
}
REFERENCE_EPOCHS, DKD_REFERENCE_WARMUP = 240, 20
# The CPU budget: about an hour on two cores for all 15 methods × 3 seeds. Single-threaded, a
# resnet8 step at batch 32 takes ~65 ms, a resnet56 step ~250 ms; with the teacher cached a
# run of 12 epochs of 3,000 images is about a minute. In a few thousand steps the number of
# updates limits accuracy, so batch 32 (the CIFAR recipes use 64). The teacher is trained once
# and gets more epochs: it must be clearly better than a student trained alone for "gap
# recovered" to mean anything. The test set is always the whole official one: on 500 images
# one standard error of an accuracy near 85% is 1.6 points, more than most methods' effects.
DEFAULTS = {"subset": 3000, "epochs": 12, "teacher_epochs": 30, "seeds": 3, "batch_size": 32}
QUICK = {"subset": 1000, "epochs": 2, "teacher_epochs": 4, "seeds": 1, "batch_size": 32}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every distillation preset on one teacher/student pair, on Fashion-MNIST."
    )
    add = parser.add_argument
    add("--methods", default=",".join(METHODS), help="comma-separated preset names")
    add("--teacher", default="resnet56", help="a zoo model")
    add("--student", default="resnet8", help="a zoo model")
    add(
        "--subset",
        type=int,
        help="images of the official training file to train and "
        "validate on (90/10, class-balanced), 0 = all 60,000; the test set is always all 10,000",
    )
    add("--epochs", type=int, help="student epochs")
    add("--teacher-epochs", type=int)
    add("--seeds", type=int, help="student seeds 0 .. n-1")
    add("--batch-size", type=int)
    add("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add("--lr", type=float, default=0.05, help="SGD with momentum 0.9, as the CIFAR recipes")
    # He et al. (2016, §4.2) warm a 110-layer ResNet up at 0.01 because 0.1 is "slightly too
    # large to start converging"; resnet56 at 0.05 scores 50% after 130 steps, at 0.02 75%.
    add("--teacher-lr", type=float, default=0.02, help="the CIFAR recipes use 0.05 (240 epochs)")
    add("--weight-decay", type=float, default=5e-4)
    add("--schedule", default="cosine", choices=SCHEDULES)
    add("--augment", default="none", choices=("none", *AUGMENTATIONS), help="the students'")
    # Trained on 2,700 images without augmentation, resnet56 fits them exactly by epoch 14 and
    # scores 85.5%, within a point of resnet8 trained alone: no gap to recover. Shifts make it
    # the stronger teacher a user would bring; the students' budget is untouched by it.
    add("--teacher-augment", default="shift", choices=("none", *AUGMENTATIONS))
    add("--no-cache", action="store_true", help="run the teacher live even without augmentation")
    add("--quick", action="store_true", help="a smoke run of a few minutes")
    add("--output", help="results file stem in bench/results (default methods, methods_quick)")
    add("--progress", action="store_true", help="print every epoch")
    parser.epilog = (
        f"Defaults: {DEFAULTS}; with --quick: {QUICK}. Flags given explicitly win over both."
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in PRESETS]
    if unknown:  # fail before an hour of training, not in the middle of it
        parser.error(
            f"method(s) {', '.join(unknown)} not in kdistill.methods.PRESETS "
            f"(available: {', '.join(PRESETS)})"
        )
    args.output = args.output or ("methods_quick" if args.quick else "methods")
    return args


def method_hyper(method: str, student, teacher, args) -> dict:
    """Preset arguments that depend on the pair or the budget; the presets keep the rest."""
    hyper: dict = {}
    if method in FEATURE_LAYERS:
        # Pair the deepest stages when the two models have a different number of them.
        depth = min(len(student.hint_layers), len(teacher.hint_layers))
        hyper["student_layers"] = FEATURE_LAYERS[method](list(student.hint_layers[-depth:]))
        hyper["teacher_layers"] = FEATURE_LAYERS[method](list(teacher.hint_layers[-depth:]))
    if method == "dkd":
        beta = DKD_BETA.get((args.teacher, args.student))
        if beta is not None:
            hyper["nckd_weight"] = beta
        hyper["warmup_epochs"] = dkd_warmup(args.epochs)
    return hyper


def dkd_warmup(epochs: int) -> int:
    """DKD ramps its term in over 20 of 240 epochs in the reference; keep that share."""
    return round(DKD_REFERENCE_WARMUP * epochs / REFERENCE_EPOCHS)


def train_loader(dataset, args, seed: int, augment: str) -> DataLoader:
    # drop_last: a final batch of one sample breaks BatchNorm in train mode and leaves the batch
    # relations of SP, RKD, PKT and CC undefined.
    return DataLoader(
        augmented(dataset, augment, seed=seed),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )


def train(
    model_name,
    terms,
    splits,
    args,
    accelerator,
    *,
    seed,
    epochs,
    lr,
    phase,
    teacher_model=None,
    augment=None,
):
    """Build the model and its distiller and fit them; returns the model, its test accuracy,
    the seconds it all took and the per-epoch history."""
    started = time.perf_counter()
    set_seed(seed)  # the same initial student for every method at a given seed
    model = create_model(model_name, num_classes=splits.num_classes, input_shape=splits.input_shape)
    teacher = teacher_model
    if isinstance(teacher_model, torch.nn.Module):
        # On the CPU, like the student and the example batch, while Distiller.build probes
        # shapes; train_loop() then puts both on the accelerator's device.
        teacher = Teacher(teacher_model.cpu(), taps=teacher_taps(terms))
    try:
        example = next(iter(DataLoader(splits.train, batch_size=2)))
        distiller = Distiller.build(
            model,
            terms,
            teacher=teacher,
            example_batch=example,
            num_samples=len(splits.train),
        )
        history = train_loop(
            distiller,
            train_loader(splits.train, args, seed, augment or args.augment),
            teacher=teacher if distiller.needs_teacher else None,
            val_loader=DataLoader(splits.val, batch_size=256),
            epochs=epochs,
            lr=lr,
            optim=Optimization(
                "sgd", weight_decay=args.weight_decay, momentum=0.9, schedule=args.schedule
            ),
            loop=Loop(phase=phase),
            accelerator=accelerator,
            progress=args.progress,
        )
    finally:
        if isinstance(teacher, Teacher) and teacher.tap is not None:
            teacher.tap.remove()  # the next method taps the same teacher at other layers
    accuracy = evaluate(model, DataLoader(splits.test, batch_size=256))["accuracy"]
    return model, accuracy, time.perf_counter() - started, history


def summarise(runs: list[dict], teacher_accuracy: float, scratch_mean: float | None) -> dict:
    """Mean and spread of the seeds' accuracies (in %), the gap recovered, the mean run time."""
    accuracies = [100 * r["accuracy"] for r in runs]
    mean = statistics.mean(accuracies)
    gap = None if scratch_mean is None else 100 * teacher_accuracy - scratch_mean
    return {
        "accuracy_mean": mean,
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "seconds_mean": statistics.mean(r["seconds"] for r in runs),
        # Undefined without a scratch row, or when the teacher is no better than scratch.
        "gap_recovered": (mean - scratch_mean) / gap if gap is not None and gap > 0 else None,
    }


def render(report: dict) -> str:
    setup, teacher = report["setup"], report["teacher"]
    sizes = setup["data"]["sizes"]
    lines = [
        f"# Distillation methods: {setup['teacher']} → {setup['student']} on Fashion-MNIST",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Data: Fashion-MNIST, {sizes['train']:,} train / {sizes['val']:,} validation images "
        f"(class-balanced from the official training file, seed 0) and all {sizes['test']:,} "
        f"official test images; augmentation {setup['augment']}; teacher outputs "
        f"{'cached once' if setup.get('teacher_cache') else 'computed live'}.  ",
        f"Budget: students {setup['epochs']} epochs, teacher {setup['teacher_epochs']} epochs "
        f"(augmentation {setup.get('teacher_augment', setup['augment'])}); "
        f"SGD lr {setup['lr']} (teacher {setup['teacher_lr']}), momentum 0.9, weight decay "
        f"{setup['weight_decay']}, {setup['schedule']} schedule, batch {setup['batch_size']}; "
        "last-epoch test accuracy.  ",
        f"Teacher: {setup['teacher']} ({teacher['params']:,} parameters), trained once (seed 0) in "
        f"{teacher['seconds']:.0f} s: {100 * teacher['accuracy']:.2f}% test accuracy. "
        f"Student: {setup['student']} ({setup['student_params']:,} parameters), "
        f"seeds {', '.join(map(str, range(setup['seeds'])))}.",
        "",
        "| method | test accuracy (mean ± std, %) | gap recovered | wall time per run (s) |",
        "|---|---:|---:|---:|",
    ]
    for method, result in report["methods"].items():
        if "error" in result:
            lines.append(f"| {method} | failed: {result['error'][:90]} (see the .json) | | |")
            continue
        s = result["summary"]
        gap = "n/a" if s["gap_recovered"] is None else f"{100 * s['gap_recovered']:+.0f}%"
        spread = "" if s["accuracy_std"] is None else f" ± {s['accuracy_std']:.2f}"
        lines.append(
            f"| {method} | {s['accuracy_mean']:.2f}{spread} | {gap} | {s['seconds_mean']:.0f} |"
        )
    lines += [
        "",
        "Gap recovered = (method − scratch) / (teacher − scratch), on the mean accuracies: 0% is "
        "no better than training the student alone, 100% matches the teacher. The teacher and "
        "the split are shared, so the ± is the spread over student seeds only.",
    ]
    if setup["dkd_warmup_epochs"] is not None:
        lines.append(
            f"DKD's warm-up is scaled to the budget: {setup['dkd_warmup_epochs']} epoch(s) "
            f"(20 of 240 in the reference)."
        )
    lines.append(f"Total wall time: {report['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def load_splits(subset: int | None):
    """Fashion-MNIST with ``subset`` training images (class-balanced, split 90/10 into train and
    validation) and the whole official test file."""
    splits = load_dataset("fashion_mnist", seed=0)
    if not subset:
        return splits
    val_count = round(subset * 0.1)

    def take(dataset: ArrayDataset, count: int) -> ArrayDataset:
        positions = np.arange(len(dataset))
        picked, _ = stratified_subset(positions, dataset.targets.numpy(), count, seed=0)
        picked = torch.from_numpy(picked)
        return ArrayDataset(dataset.inputs[picked], dataset.targets[picked])

    train, val = take(splits.train, subset - val_count), take(splits.val, val_count)
    sizes = {"train": len(train), "val": len(val), "test": len(splits.test)}
    identity = {**splits.identity, "subset": subset, "sizes": sizes}
    return dataclasses.replace(splits, train=train, val=val, identity=identity)


def trained_teacher(splits, args, accelerator):
    """The teacher trained once (seed 0), or reused from bench/.teachers/ when a run with the
    same teacher, data and teacher budget made it: it is most of a quick run's time."""
    recipe = {
        "teacher": args.teacher,
        "data": splits.identity,
        "epochs": args.teacher_epochs,
        "lr": args.teacher_lr,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
        "augment": args.teacher_augment,
        "device": accelerator.device.type,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    weights = TEACHERS / f"{args.teacher}-{key[:12]}.safetensors"
    record_file = weights.with_suffix(".json")
    model = create_model(
        args.teacher, num_classes=splits.num_classes, input_shape=splits.input_shape
    )
    if weights.exists() and record_file.exists():
        model.load_state_dict(load_file(weights))
        return model, {**json.loads(record_file.read_text()), "reused": str(weights.name)}
    model, accuracy, seconds, history = train(
        args.teacher,
        preset_terms("scratch"),
        splits,
        args,
        accelerator,
        seed=0,
        epochs=args.teacher_epochs,
        lr=args.teacher_lr,
        phase="teacher",
        augment=args.teacher_augment,
    )
    record = {"accuracy": accuracy, "seconds": seconds, "history": history, "recipe": recipe}
    TEACHERS.mkdir(exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, weights)
    record_file.write_text(json.dumps(record, default=str))
    return model, record


def cached_teacher(teacher_model, splits, student_probe, args, accelerator, root) -> CachedTeacher:
    """The teacher's logits and every feature any of the methods reads, computed once over the
    training images (float32: the cached values are the live ones)."""
    taps = sorted(
        {
            tap
            for method in args.methods
            if method != "scratch"
            for tap in teacher_taps(
                preset_terms(method, **method_hyper(method, student_probe, teacher_model, args))
            )
        }
    )
    teacher = Teacher(teacher_model.cpu(), taps=taps)
    started = time.perf_counter()
    try:
        cache = build_cache(
            root,
            teacher,
            splits.train,
            fingerprint={"bench": "methods", "taps": taps},
            dtype="float32",
            accelerator=accelerator,
        )
    finally:
        if teacher.tap is not None:
            teacher.tap.remove()
    print(
        f"teacher cache: logits and {taps} of {len(splits.train)} images in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return CachedTeacher(cache)


def run_method(method, splits, teacher_model, teacher_source, student_probe, args, accelerator):
    """All seeds of one method; the runs, or an error that ends the method but not the table.
    ``teacher_source`` is the teacher model itself or its cached outputs."""
    runs = []
    try:
        for seed in range(args.seeds):
            hyper = method_hyper(method, student_probe, teacher_model, args)
            _, accuracy, seconds, history = train(
                args.student,
                preset_terms(method, **hyper),
                splits,
                args,
                accelerator,
                seed=seed,
                epochs=args.epochs,
                lr=args.lr,
                teacher_model=teacher_source,
                phase=f"{method} seed {seed}",
            )
            runs.append(
                {"seed": seed, "accuracy": accuracy, "seconds": seconds, "history": history}
            )
            print(f"{method} seed {seed}: {100 * accuracy:.2f}% ({seconds:.0f} s)", flush=True)
    except Exception as error:  # e.g. a loss that diverges at this budget
        traceback.print_exc()
        message = str(error).splitlines()[0][:160] if str(error) else ""
        return {"error": f"{type(error).__name__}: {message}", "runs": runs}
    return {"runs": runs}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    command = "python bench/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    splits = load_splits(args.subset)
    accelerator = make_accelerator(args.device)
    print(f"{command}\ndata: {splits.identity['sizes']}, device {accelerator.device}", flush=True)

    teacher_model, teacher_record = trained_teacher(splits, args, accelerator)
    teacher_accuracy, teacher_seconds = teacher_record["accuracy"], teacher_record["seconds"]
    print(
        f"teacher {args.teacher}: {100 * teacher_accuracy:.2f}% ({teacher_seconds:.0f} s"
        f"{', reused from ' + teacher_record['reused'] if 'reused' in teacher_record else ''})"
    )
    student_probe = create_model(
        args.student, num_classes=splits.num_classes, input_shape=splits.input_shape
    )
    cache_dir = tempfile.TemporaryDirectory(prefix="kdistill-bench-cache-")
    teacher_source = teacher_model
    if args.augment == "none" and not args.no_cache:
        teacher_source = cached_teacher(
            teacher_model, splits, student_probe, args, accelerator, cache_dir.name
        )
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    report = {
        "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {device}, torch {torch.__version__}",
        "setup": {
            "teacher": args.teacher,
            "student": args.student,
            "subset": args.subset,
            "teacher_cache": isinstance(teacher_source, CachedTeacher),
            "data": splits.identity,
            "epochs": args.epochs,
            "teacher_epochs": args.teacher_epochs,
            "seeds": args.seeds,
            "lr": args.lr,
            "teacher_lr": args.teacher_lr,
            "weight_decay": args.weight_decay,
            "schedule": args.schedule,
            "batch_size": args.batch_size,
            "augment": args.augment,
            "teacher_augment": args.teacher_augment,
            "student_params": sum(p.numel() for p in student_probe.parameters()),
            "dkd_warmup_epochs": dkd_warmup(args.epochs) if "dkd" in args.methods else None,
        },
        "teacher": {**teacher_record, "params": sum(p.numel() for p in teacher_model.parameters())},
        "methods": {},
    }
    scratch_mean = None
    # scratch first: every other row's gap recovered is measured from it.
    for method in sorted(args.methods, key=lambda m: m != "scratch"):
        result = run_method(
            method, splits, teacher_model, teacher_source, student_probe, args, accelerator
        )
        if "error" not in result:
            result["summary"] = summarise(result["runs"], teacher_accuracy, scratch_mean)
            if method == "scratch":
                scratch_mean = result["summary"]["accuracy_mean"]
                if 100 * teacher_accuracy > scratch_mean:
                    result["summary"]["gap_recovered"] = 0.0
        report["methods"][method] = result
        report["seconds"] = time.perf_counter() - started
        write(report, args.output)  # after every method: an interrupted run keeps what it made

    print("\n" + render(report))
    return 1 if any("error" in r for r in report["methods"].values()) else 0


def write(report: dict, stem: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(render(report))
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
