"""The scratch baseline of ``kdistill.distill(..., baseline=True)``: the same student, from the same
initial weights, trained on the labels alone for the same steps, then the teacher, the scratch
and the distilled student compared on the validation data with the paired statistics of
``kdistill.evaluation.paired``. Without it, a distilled accuracy says nothing about whether
distillation helped or the student cannot learn at these settings."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from torch import nn

from kdistill.evaluation.classification import evaluate
from kdistill.evaluation.paired import chance_note, compare, uncertainty

ROWS = (("teacher", "teacher_metrics"), ("scratch", "baseline_metrics"), ("distilled", "metrics"))


def initial_copy(student: nn.Module, baseline: bool) -> nn.Module | None:
    """The student's weights before training, for the baseline: the same initialisation a
    fresh build under the same seed gives, without needing to know how to build it."""
    return copy.deepcopy(student) if baseline else None


def scratch_baseline(
    initial: nn.Module,
    train_scratch: Callable[[nn.Module], list[dict]],
    *,
    teacher: nn.Module,
    distilled: nn.Module,
    val_loader,
    accelerator,
    classes: int,
    settings: str,
) -> dict:
    """Train ``initial`` with ``train_scratch`` (the distilled student's budget, no teacher) and
    compare the three models on ``val_loader``; returns ``DistillResult``'s baseline fields."""
    history = train_scratch(initial)
    scored = {
        name: evaluate(model, val_loader, accelerator, outcomes=True)
        for name, model in (("teacher", teacher), ("scratch", initial), ("distilled", distilled))
    }
    outcomes = {
        name: dataclasses.replace(s["outcomes"], unit="validation samples")
        for name, s in scored.items()
    }
    comparison = compare(
        outcomes["distilled"], outcomes["scratch"], higher_is_better=True, mcnemar=True
    )
    accuracy = {name: s["accuracy"] for name, s in scored.items()}
    return {
        "baseline": initial,
        "baseline_history": history,
        "baseline_metrics": {"val/accuracy": accuracy["scratch"]},
        "teacher_metrics": {"val/accuracy": accuracy["teacher"]},
        "comparison": comparison,
        "verdict": baseline_verdict(comparison, accuracy, classes=classes, settings=settings),
    }


def baseline_verdict(
    comparison: dict, accuracy: dict[str, float], *, classes: int, settings: str
) -> str:
    """The verdict line: helped, no significant difference or worse, with the paired interval and
    McNemar's p; when neither student beat chance, that the student or its settings are at fault."""
    noise = uncertainty(comparison, scale=100, unit=" points")
    stuck = chance_note(
        {k: accuracy[k] for k in ("distilled", "scratch")}, classes, settings=settings
    )
    if stuck:
        return f"{stuck} (distilled − scratch: {noise})"
    if comparison["better"]:
        return f"Distillation helped: validation accuracy {noise}, against the student alone."
    if comparison["worse"]:
        return f"Distillation did worse than the student alone (validation accuracy {noise})."
    return (
        "No significant difference between the distilled and the scratch student "
        f"(validation accuracy {noise})."
    )


def result_table(result) -> str:
    """``print(result)`` of a ``DistillResult``: each model's validation accuracy, the verdict."""
    rows = [(name, getattr(result, field).get("val/accuracy")) for name, field in ROWS]
    rows = [(name, value) for name, value in rows if value is not None]
    if not rows:
        return (
            f"DistillResult: {len(result.history)} epochs trained; no val_data given, so no scores"
        )
    lines = [
        "model        val accuracy",
        *(f"{name:<12} {100 * value:>11.2f}%" for name, value in rows),
    ]
    return "\n".join(
        [
            *lines,
            *transfer_line(result.data),
            result.verdict
            or "distill(..., baseline=True) also trains the student alone and compares.",
        ]
    )


def transfer_line(data: dict) -> list[str]:
    """With a transfer set: both set sizes, the mix and the shared step budget."""
    if not data:
        return []
    share = data["labelled_share"]
    mix = "natural proportion" if share is None else f"labelled share {share:g}"
    return [
        f"data: {data['labelled']:,} labelled + {data['unlabelled']:,} unlabelled ({mix}); "
        f"every student took {data['steps_per_epoch']:,} optimizer steps per epoch"
    ]


__all__ = ["baseline_verdict", "initial_copy", "result_table", "scratch_baseline"]
