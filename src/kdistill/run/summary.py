"""What a finished run says about itself: ``summary.json``, built from the roles the teaching
mode returned (each model measured on the test split, its size, latency and checkpoint), the
task's samples and diagnostics. ``export``, ``report`` and ``--resume`` read its ``roles``."""

from __future__ import annotations

import math
import platform

import torch

from kdistill.deploy.latency import measure_latency
from kdistill.evaluation import Task
from kdistill.evaluation.diagnostics import diagnose
from kdistill.evaluation.paired import compare
from kdistill.io.weights import count_parameters
from kdistill.run.plan import Plan
from kdistill.teaching import Role, Roles
from kdistill.training.sharding import is_sharded


def architecture_name(architecture: dict) -> str:
    if "ensemble" in architecture:
        return "ensemble of " + " + ".join(member["model"] for member in architecture["ensemble"])
    if architecture.get("keep_layers"):  # depth-pruned (student.prune)
        return f"{architecture['model']}, {len(architecture['keep_layers'])} layers kept"
    return architecture["model"]


def selection(history: list[dict], phase: str) -> dict:
    """The epoch whose weights a trained role kept (``train.keep=best``) and whether it stopped
    early, from the metrics log: the last record of its phase says."""
    records = [r for r in history if r.get("phase") == phase]
    if not records or "best_epoch" not in records[-1]:
        return {}
    last = records[-1]
    return {
        "best_epoch": last["best_epoch"],
        "epochs_trained": last["epoch"],
        "stopped_early": bool(last.get("stopped_early")),
    }


def measure(
    role: Role,
    task: Task,
    run_dir,
    test_loader,
    example,
    latency: bool,
    history: list[dict] = (),
    outcomes: dict | None = None,
    name: str = "",
) -> dict:
    """A role's summary entry; its per-unit test results go to ``outcomes[name]``, for the
    paired comparisons."""
    result = task.evaluate(role.model.cpu(), test_loader, outcomes=True)
    if outcomes is not None:
        outcomes[name] = result["outcomes"]
    path = run_dir / "checkpoints" / role.file
    entry = {
        "model": architecture_name(role.architecture),
        **task.scores(result),
        "params": count_parameters(role.model),
        "bytes": path.stat().st_size,
        "checkpoint": role.file,
        "train_seconds": round(role.seconds, 2),
    }
    if latency:
        timings = {
            f"batch_{b}": measure_latency(role.model, example, batch_size=b) for b in (1, 256)
        }
        entry["latency_ms"] = {batch: timing.median_ms for batch, timing in timings.items()}
        unstable = [batch for batch, timing in timings.items() if not timing.measurable]
        if unstable:  # shown as such in the report: two equal models can differ 100x here
            entry["latency_unstable"] = unstable
    if "connector_params" in role.info:
        entry["connector_params"] = role.info["connector_params"]
    if role.source:
        entry["source"] = role.source
    entry.update(selection(list(history), role.file.removesuffix(".safetensors")))
    return entry


# Every pair the report compares, first minus second: the verdict's pair first.
PAIRS = (
    ("student", "scratch"),
    ("teacher", "student"),
    ("teacher", "scratch"),
    ("student", "pseudo_labels"),  # with a transfer set and data.pseudo_labels
    ("pseudo_labels", "scratch"),
)


def comparisons(outcomes: dict, task: Task) -> dict:
    """Paired test-set statistics of each pair of roles (``kdistill.evaluation.paired``):
    a bootstrap interval of the headline's difference, and McNemar's exact test for accuracy."""
    return {
        f"{first}_vs_{second}": {
            "metric": task.headline,
            **compare(
                outcomes[first],
                outcomes[second],
                higher_is_better=task.higher_is_better[task.headline],
                mcnemar=task.headline == "accuracy",
            ),
        }
        for first, second in PAIRS
        if first in outcomes and second in outcomes
    }


def final_validation(history: list[dict], metric: str) -> dict:
    """Each student's last validation score of the headline, as its curve ends."""
    last = {}
    for record in history:
        if record.get("phase") in ("scratch", "student") and f"val/{metric}" in record:
            last[record["phase"]] = record[f"val/{metric}"]
    return last


def students_record(train) -> dict:
    record = {"epochs": train.epochs, "augment": train.augment, "mix": train.mix}
    if train.mix != "none" or train.scratch_mixing != "none":
        record["mix_alpha"] = train.mix_alpha
    if train.scratch_mixing != train.mix:
        record["scratch_mix"] = train.scratch_mixing
    if train.views and train.views < train.epochs:
        record["views"] = train.views
    return record


def budget_record(recipe, splits) -> dict:
    """With a transfer set: every student's epoch draws as many samples as both sets hold, so
    all take the same optimizer steps (``kdistill.data.transfer.BudgetSampler``)."""
    if splits.unlabelled is None:
        return {}
    draws = len(splits.train) + len(splits.unlabelled)
    return {
        "budget": {
            "samples_per_epoch": draws,
            "steps_per_epoch": math.ceil(draws / recipe.train.batch_size),
            "labelled_share": recipe.data.labelled_share,
            "pseudo_labels": recipe.data.pseudo_labels,
        }
    }


def data_record(splits, unlabelled: str | None) -> dict:
    """The data's identity; with a transfer set, its source and size beside the labelled
    split sizes (``train`` is the labelled training split)."""
    if splits.unlabelled is None:
        return splits.identity
    sizes = {**splits.identity.get("sizes", {}), "unlabelled": len(splits.unlabelled)}
    return {**splits.identity, "sizes": sizes, "unlabelled": unlabelled}


def summarize(
    plan: Plan, roles: Roles, *, run_dir, test_loader, history: list[dict], accelerator
) -> dict:
    recipe, task, splits = plan.recipe, plan.task, plan.splits
    example = splits.test[0]["input"]
    outcomes = {}
    summary = {
        "name": recipe.name,
        "method": recipe.method or "custom terms",
        **(
            {"accuracy_unit": "fraction of the test split classified correctly (0..1)"}
            if "accuracy" in task.metrics
            else {}
        ),
        "task": {
            "name": task.name,
            "metrics": list(task.metrics),
            "higher_is_better": task.higher_is_better,
            "percent": sorted(task.percent),
        },
        "data": data_record(splits, recipe.data.unlabelled),
        "mode": plan.mode,
        # How both students trained: the scratch baseline gets the distilled student's augmentation,
        # mixing (on the mixed labels, unless train.scratch_mix names its own) and budget.
        "students": {**students_record(recipe.train), **budget_record(recipe, splits)},
        "roles": {name: role.record() for name, role in roles.items()},
        **{
            name: measure(
                role,
                task,
                run_dir,
                test_loader,
                example,
                recipe.output.latency,
                history,
                outcomes,
                name,
            )
            for name, role in roles.items()
        },
        "latency_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "world_size": accelerator.num_processes,
        "strategy": "fsdp" if is_sharded(accelerator) else "ddp",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    summary["comparisons"] = comparisons(outcomes, task)
    summary["validation"] = final_validation(history, task.headline)
    models = {name: roles[name].model for name in ("teacher", "scratch", "student")}
    if task.samples is not None:  # e.g. generated text of each language model
        summary["samples"] = task.samples(models, splits)
    unaugmented = recipe.train.augment == "none" and recipe.teacher.augment != "none"
    if unaugmented and summary["teacher"].get("source") == "trained":
        # Read by the report: students trained without the augmentation the teacher had are
        # compared against a scratch student weaker than one with it.
        summary["students"]["teacher_augment"] = recipe.teacher.augment
    if task.name == "classification":  # agreement, KL, per-class accuracy, calibration, confusion
        summary["diagnostics"] = diagnose(
            models,
            test_loader,
            num_classes=splits.num_classes,
            class_names=splits.class_names,
            history=history,
            terms=plan.terms,
        )
    return summary
