"""The main job, composed from a validated recipe: teacher → scratch student → distilled student
→ evaluation → summary, report, plots. Part of the composition root with ``cli``: the only code
that reads the whole recipe; everything it calls takes plain arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from kdistill.config import Recipe, dump_config
from kdistill.data import DataSplits, load_dataset
from kdistill.data.augment import augmented
from kdistill.distiller import Distiller, Teacher
from kdistill.errors import ConfigError, UserError
from kdistill.export import count_parameters, load_weights, measure_latency, save_weights
from kdistill.methods import Term, preset_terms
from kdistill.models import UnknownModelError, create_model
from kdistill.report import MetricsLog, plot_history, results_table, verdict, write_report
from kdistill.tasks import TASKS, Task
from kdistill.trainer import fit, make_accelerator

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json")


def prepare_run_dir(recipe: Recipe, *, overwrite: bool = False) -> Path:
    """``<output.dir>/<name>``, new. An existing run is replaced only when asked, and only if it
    is a kdistill run directory (never an arbitrary folder)."""
    run_dir = Path(recipe.output.dir) / recipe.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{run_dir} already exists: pass --overwrite to replace it, "
                f"or name=<new name> for a separate run"
            )
        if not any((run_dir / marker).exists() for marker in RUN_MARKERS):
            raise UserError(f"{run_dir} exists and is not a kdistill run; choose another name= or output.dir=")
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def load_data(recipe: Recipe) -> DataSplits:
    data = recipe.data
    try:
        return load_dataset(
            data.dataset, path=data.path, val_fraction=data.val_fraction,
            test_fraction=data.test_fraction, seed=data.seed, subset=data.subset, **data.options,
        )
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None


def train_loader(splits: DataSplits, recipe: Recipe, augment: str) -> DataLoader:
    # A seeded generator gives the scratch and the distilled student the same batch order
    # (and, through Augmented, the same augmented views).
    generator = torch.Generator().manual_seed(recipe.train.seed)
    return DataLoader(
        augmented(splits.train, augment, seed=recipe.train.seed), batch_size=recipe.train.batch_size,
        shuffle=True, generator=generator, num_workers=recipe.data.num_workers,
    )


def eval_loader(dataset, recipe: Recipe) -> DataLoader:
    return DataLoader(dataset, batch_size=recipe.train.eval_batch_size, num_workers=recipe.data.num_workers)


def build_model(section: str, name: str, kwargs: dict, splits: DataSplits) -> nn.Module:
    try:
        return create_model(name, num_classes=splits.num_classes, input_shape=splits.input_shape, **kwargs)
    except UnknownModelError as error:
        raise ConfigError(f"{section}.model: {error}") from None
    except TypeError as error:
        raise ConfigError(f"{section}.kwargs: {error}") from None


def recipe_terms(recipe: Recipe) -> list[Term]:
    try:
        if recipe.terms is not None:
            return [Term(**term.model_dump()) for term in recipe.terms]
        d = recipe.distill
        return preset_terms(
            recipe.method, temperature=d.temperature, alpha=d.alpha, ce_weight=d.ce_weight, **d.params
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{'terms' if recipe.terms is not None else 'method'}: {error}") from None


def teacher_fingerprint(recipe: Recipe, splits: DataSplits) -> str:
    """Identity of a teacher trained here: its model, training settings and data. A later run
    of the same recipe (any student, any method) reuses the weights."""
    identity = {
        "teacher": recipe.teacher.model_dump(exclude={"checkpoint"}),
        "data": splits.identity,
        "train": recipe.train.model_dump(include={"batch_size", "seed", "schedule", "weight_decay", "momentum", "mixed_precision"}),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def obtain_teacher(recipe, splits, task, val_loader, accelerator, log, run_dir) -> tuple[nn.Module, dict]:
    """Load the teacher from ``teacher.checkpoint``, from an earlier run's store, or train it."""
    cfg = recipe.teacher
    model = build_model("teacher", cfg.model, cfg.kwargs, splits)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise UserError(f"teacher.checkpoint: {path} does not exist")
        _load_checkpoint(model, path, "teacher.checkpoint")
        info = {"source": str(path), "trained_seconds": 0.0}
    else:
        store = Path(recipe.output.dir) / ".teachers" / f"{cfg.model}-{teacher_fingerprint(recipe, splits)}.safetensors"
        if store.is_file():
            _load_checkpoint(model, store, "teacher store")
            info = {"source": f"reused {store}", "trained_seconds": 0.0}
        else:
            set_seed(recipe.train.seed)
            started = time.perf_counter()
            fit(
                Distiller(model, task.scratch_terms()), train_loader(splits, recipe, cfg.augment), val_loader=val_loader,
                epochs=cfg.epochs, optimizer=cfg.optimizer, lr=cfg.lr,
                weight_decay=recipe.train.weight_decay, momentum=recipe.train.momentum,
                schedule=recipe.train.schedule, accelerator=accelerator, log=log, phase="teacher",
                progress=recipe.output.progress, evaluate_fn=task.evaluate,
            )
            info = {"source": "trained", "trained_seconds": time.perf_counter() - started}
            model = model.cpu()
            tmp = store.with_suffix(".tmp")
            save_weights(model, tmp)
            os.replace(tmp, store)  # atomic: a crash never leaves a half-written teacher
    save_weights(model.cpu(), run_dir / "checkpoints" / "teacher.safetensors")
    return model, info


def _load_checkpoint(model: nn.Module, path: Path, field: str) -> None:
    try:
        load_weights(model, path)
    except Exception as error:  # safetensors raises several types for bad files
        raise UserError(f"{field}: cannot load {path} into the {type(model).__name__} ({str(error).splitlines()[0][:200]})") from None


def train_student(recipe, splits, task, terms, teacher, val_loader, accelerator, log, phase):
    set_seed(recipe.train.seed)  # same initial weights for the scratch and the distilled student
    student = build_model("student", recipe.student.model, recipe.student.kwargs, splits)
    example = next(iter(DataLoader(splits.train, batch_size=2)))
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=example)
    t = recipe.train
    started = time.perf_counter()
    fit(
        distiller, train_loader(splits, recipe, t.augment), teacher=teacher if distiller.needs_teacher else None,
        val_loader=val_loader, epochs=t.epochs, optimizer=t.optimizer, lr=t.lr,
        weight_decay=t.weight_decay, momentum=t.momentum, schedule=t.schedule,
        accelerator=accelerator, log=log, phase=phase, progress=recipe.output.progress,
        evaluate_fn=task.evaluate,
    )
    return student.cpu(), time.perf_counter() - started


def measure(model, name, task: Task, path, test_loader, example, latency: bool, seconds: float) -> dict:
    result = task.evaluate(model.cpu(), test_loader)
    entry = {
        "model": name, **{k: v for k, v in result.items() if k != "n"},
        "params": count_parameters(model), "bytes": path.stat().st_size,
        "checkpoint": str(path.name), "train_seconds": round(seconds, 2),
    }
    if latency:
        entry["latency_ms"] = {
            f"batch_{b}": measure_latency(model, example, batch_size=b) for b in (1, 256)
        }
    return entry


def run(recipe: Recipe, *, overwrite: bool = False, echo=print) -> dict:
    """Run a recipe end to end; returns the summary also written to ``summary.json``."""
    started = time.perf_counter()
    splits = load_data(recipe)  # bad data fails before anything is written or replaced
    task = TASKS[splits.task]
    terms = recipe_terms(recipe)
    run_dir = prepare_run_dir(recipe, overwrite=overwrite)
    (run_dir / "config.yaml").write_text(dump_config(recipe))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    accelerator = make_accelerator(recipe.train.device, recipe.train.mixed_precision)
    val_loader, test_loader = eval_loader(splits.val, recipe), eval_loader(splits.test, recipe)

    teacher_model, teacher_info = obtain_teacher(recipe, splits, task, val_loader, accelerator, metrics.write, run_dir)
    teacher_taps = Distiller(nn.Identity(), terms).teacher_taps
    teacher = Teacher(teacher_model, taps=teacher_taps)

    scratch_model, scratch_seconds = train_student(
        recipe, splits, task, task.scratch_terms(), None, val_loader, accelerator, metrics.write, "scratch"
    )
    save_weights(scratch_model, run_dir / "checkpoints" / "scratch.safetensors")
    student_model, student_seconds = train_student(
        recipe, splits, task, terms, teacher, val_loader, accelerator, metrics.write, "student"
    )
    save_weights(student_model, run_dir / "checkpoints" / "student.safetensors")

    example = splits.test[0]["input"]
    latency = recipe.output.latency
    ckpt = run_dir / "checkpoints"
    summary = {
        "name": recipe.name,
        "method": recipe.method or "custom terms",
        **({"accuracy_unit": "fraction of the test split classified correctly (0..1)"} if "accuracy" in task.metrics else {}),
        "task": {"name": task.name, "metrics": list(task.metrics), "higher_is_better": task.higher_is_better, "percent": sorted(task.percent)},
        "data": splits.identity,
        "teacher": {**measure(teacher_model, recipe.teacher.model, task, ckpt / "teacher.safetensors", test_loader, example, latency, teacher_info["trained_seconds"]), "source": teacher_info["source"]},
        "scratch": measure(scratch_model, recipe.student.model, task, ckpt / "scratch.safetensors", test_loader, example, latency, scratch_seconds),
        "student": measure(student_model, recipe.student.model, task, ckpt / "student.safetensors", test_loader, example, latency, student_seconds),
        "latency_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    plots = plot_history(metrics.read(), run_dir / "plots") if recipe.output.plots else []
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir, summary, plots)
    echo("")
    echo(results_table(summary))
    echo("")
    echo(verdict(summary))
    echo(f"Run written to {run_dir}/ in {summary['seconds']:.0f} s")
    return summary
