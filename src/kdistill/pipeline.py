"""The main job, composed from a validated recipe: teacher → scratch student → distilled student
→ evaluation → summary, report, plots (``phases`` holds the steps). With ``cli``, the
composition root: the only code that reads the whole recipe; everything it calls takes plain
arguments.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from kdistill.config import Recipe
from kdistill.diagnostics import diagnose
from kdistill.distiller import Teacher
from kdistill.errors import UserError
from kdistill.export import count_parameters, measure_latency
from kdistill.method_setup import prepare_teacher
from kdistill.methods import teacher_taps
from kdistill.phases import (
    RunContext,
    cached_teacher,
    eval_loader,
    load_data,
    obtain_teachers,
    open_run_dir,
    recipe_terms,
    train_mutual,
    train_student,
)
from kdistill.report import (
    MetricsLog,
    plot_diagnostics,
    plot_history,
    results_table,
    verdict,
    write_report,
)
from kdistill.tasks import TASKS, Task
from kdistill.trainer import make_accelerator

# Where each mode keeps the weights of the model that taught.
TEACHER_FILES = {"teacher": "teacher.safetensors", "born_again": "scratch.safetensors", "mutual": "peer.safetensors"}


def teacher_name(recipe: Recipe) -> str:
    if recipe.teachers is not None:
        return "ensemble of " + " + ".join(cfg.model for cfg in recipe.teachers)
    if recipe.distill.mode == "born_again":
        return recipe.student.model
    return recipe.teacher.model


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


def run(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, echo=print) -> dict:
    """Run a recipe end to end; returns the summary also written to ``summary.json``.

    Under ``torchrun`` or ``accelerate launch`` every process runs this; training is
    data-parallel and only the main process writes files and prints.
    """
    started = time.perf_counter()
    accelerator = make_accelerator(recipe.train.device, recipe.train.mixed_precision)
    if recipe.train.deterministic:
        torch.use_deterministic_algorithms(True)
    splits = load_data(recipe)  # bad data fails before anything is written or replaced
    task = TASKS[splits.task]
    terms = recipe_terms(recipe, splits)
    # Every process checks the directory before any creates it (or one would see the other's).
    run_dir = open_run_dir(recipe, overwrite=overwrite, resume=resume, create=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not resume:
        open_run_dir(recipe, overwrite=overwrite, create=True)
    accelerator.wait_for_everyone()
    if resume and (run_dir / "summary.json").is_file():
        echo(f"{run_dir} is already complete; nothing to resume")
        return json.loads((run_dir / "summary.json").read_text())
    echo_main = echo if accelerator.is_main_process else (lambda *_: None)
    echo_main(f"run {recipe.name}: {accelerator.num_processes} process(es), world_size={accelerator.num_processes}, device {accelerator.device}")
    ctx = RunContext(
        recipe=recipe, splits=splits, task=task, accelerator=accelerator, run_dir=run_dir,
        metrics=MetricsLog(run_dir / "metrics.jsonl"), resume=resume,
        val_loader=eval_loader(splits.val, recipe),
    )
    test_loader = eval_loader(splits.test, recipe)

    mode = recipe.distill.mode
    extra: dict = {}
    scratch_model, scratch_seconds = None, 0.0
    if mode == "teacher":
        teacher_model, teacher_info = obtain_teachers(ctx)
        prepare_teacher(recipe.distill.params, teacher_model)
        teacher = Teacher(teacher_model, taps=teacher_taps(terms))
        if recipe.teacher.cache:
            teacher = cached_teacher(ctx, teacher)
        if recipe.assistant is not None:
            # TAKD (Mirzadeh et al., AAAI 2020, arXiv:1902.03393): the assistant, distilled from
            # the teacher with the same terms, teaches the student in its place.
            assistant_model, assistant_seconds = train_student(ctx, "assistant", terms, teacher, model=recipe.assistant)
            extra["assistant"] = (assistant_model, recipe.assistant.model, assistant_seconds)
            teacher = Teacher(assistant_model, taps=teacher_taps(terms))
    scratch_model, scratch_seconds = train_student(ctx, "scratch", task.scratch_terms(), None)
    if mode == "teacher":
        student_model, student_seconds = train_student(ctx, "student", terms, teacher)
    elif mode == "born_again":
        # Born-again networks (Furlanello et al., ICML 2018, arXiv:1805.04770): generation 0 is
        # the student trained from scratch; each later generation, same architecture, is
        # distilled from the one before, and the last is the student.
        teacher_model, teacher_info = scratch_model, {"source": "born-again generation 0 (the scratch student)", "trained_seconds": scratch_seconds}
        previous = scratch_model
        for generation in range(1, recipe.distill.generations + 1):
            phase = "student" if generation == recipe.distill.generations else f"generation_{generation}"
            previous, seconds = train_student(ctx, phase, terms, Teacher(previous, taps=teacher_taps(terms)))
            if phase != "student":
                extra[phase] = (previous, recipe.student.model, seconds)
        student_model, student_seconds = previous, seconds
    else:  # mutual
        student_model, teacher_model, student_seconds = train_mutual(ctx)
        teacher_info = {"source": "deep mutual learning peer, trained alongside the student", "trained_seconds": student_seconds}
    if not accelerator.is_main_process:
        return {}

    example = splits.test[0]["input"]
    latency = recipe.output.latency
    ckpt = ctx.checkpoints
    summary = {
        "name": recipe.name,
        "method": recipe.method or "custom terms",
        **({"accuracy_unit": "fraction of the test split classified correctly (0..1)"} if "accuracy" in task.metrics else {}),
        "task": {"name": task.name, "metrics": list(task.metrics), "higher_is_better": task.higher_is_better, "percent": sorted(task.percent)},
        "data": splits.identity,
        "mode": mode,
        "teacher": {**measure(teacher_model, teacher_name(recipe), task, ckpt / TEACHER_FILES[mode], test_loader, example, latency, teacher_info["trained_seconds"]), "source": teacher_info["source"]},
        "scratch": measure(scratch_model, recipe.student.model, task, ckpt / "scratch.safetensors", test_loader, example, latency, scratch_seconds),
        "student": measure(student_model, recipe.student.model, task, ckpt / "student.safetensors", test_loader, example, latency, student_seconds),
        **{role: measure(model, name, task, ckpt / f"{role}.safetensors", test_loader, example, latency, seconds) for role, (model, name, seconds) in extra.items()},
        "latency_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "world_size": accelerator.num_processes,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
    }
    if task.samples is not None:  # e.g. generated text of each language model
        summary["samples"] = task.samples({"teacher": teacher_model, "scratch": scratch_model, "student": student_model}, splits)
    if task.name == "classification":  # agreement, KL, per-class accuracy, calibration, confusion
        summary["diagnostics"] = diagnose(
            {"teacher": teacher_model, "scratch": scratch_model, "student": student_model}, test_loader,
            num_classes=splits.num_classes, class_names=splits.class_names, history=ctx.metrics.read(), terms=terms,
        )
    summary["seconds"] = round(time.perf_counter() - started, 1)
    plots = (
        plot_history(ctx.metrics.read(), run_dir / "plots") + plot_diagnostics(summary.get("diagnostics"), run_dir / "plots")
        if recipe.output.plots else []
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir, summary, plots)
    echo("")
    echo(results_table(summary))
    echo("")
    echo(verdict(summary))
    echo(f"Run written to {run_dir}/ in {summary['seconds']:.0f} s")
    return summary


def cache(recipe: Recipe, *, echo=print) -> dict:
    """``kdistill cache``: obtain the recipe's teacher (trained here if no store or checkpoint
    has it) and build its output cache, so that later runs with ``teacher.cache: true`` never
    run the teacher. Returns the cache's metadata."""
    accelerator = make_accelerator(recipe.train.device, recipe.train.mixed_precision)
    splits = load_data(recipe)
    terms = recipe_terms(recipe, splits)
    if recipe.distill.mode != "teacher":
        raise UserError(f"distill.mode={recipe.distill.mode} has no fixed teacher to cache")
    # A teacher trained for the cache keeps its training files beside the teacher store.
    work = Path(recipe.output.dir) / ".teachers" / f"work-{recipe.name}"
    if accelerator.is_main_process:
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    ctx = RunContext(
        recipe=recipe, splits=splits, task=TASKS[splits.task], accelerator=accelerator, run_dir=work,
        metrics=MetricsLog(work / "metrics.jsonl"), resume=True, val_loader=eval_loader(splits.val, recipe),
    )
    teacher_model, info = obtain_teachers(ctx)
    prepare_teacher(recipe.distill.params, teacher_model)
    cached = cached_teacher(ctx, Teacher(teacher_model, taps=teacher_taps(terms)))
    meta = cached.cache.meta
    size = sum(a["bytes"] for a in meta["arrays"].values())
    echo(
        f"teacher cache for {recipe.name} at {cached.cache.root}: {meta['views']} view(s) of "
        f"{meta['samples']} samples, {size / 1e6:.1f} MB ({', '.join(meta['arrays'])}); teacher {info['source']}"
    )
    return meta
