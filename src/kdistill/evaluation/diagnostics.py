"""What the numbers of a classification run say beyond accuracy: how closely the students follow
the teacher, per-class accuracy, calibration, confusion, and, when distillation did not beat the
scratch student, which of the usual causes this run's own numbers point to.

The metric functions are pure functions of logits and integer targets (N, C) / (N,); ``diagnose``
runs the three models of a run over one split and collects them into the ``"diagnostics"`` entry
of ``summary.json``; ``likely_causes`` reads a summary (nothing else), so a report can be
re-rendered, and tested, from a summary alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

ECE_BINS = 15
BINNING = (
    f"{ECE_BINS} equal-width bins of top-1 confidence over (0, 1], each bin (lower, upper] "
    "(Guo et al., ICML 2017); ECE = Σ_b (n_b / N)·|accuracy_b − mean confidence_b|"
)
# Thresholds of the "likely causes" heuristics, named so the report can state them.
CAPACITY_RATIO = 10.0  # teacher/student parameters from which a capacity gap becomes plausible
TEMPERATURE_RANGE = (2.0, 10.0)  # outside it soft targets are near one-hot / near uniform
LOW_DISTILL_SHARE = 0.10  # distillation terms below this share of the final training loss
STILL_FALLING = 0.05  # relative fall of a loss over the last epochs that means "not converged"


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Top-1 agreement: the fraction of samples on which the student predicts the teacher's class
    (right or wrong). Logits (N, C)."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).double().mean().item()


def mean_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> float:
    """Mean over samples of KL(p_T ‖ p_S) in nats, at ``temperature`` (1: the models' own
    predictive distributions). The direction is the one Hinton KD minimises. Logits (N, C)."""
    teacher_log_probs = F.log_softmax(teacher_logits.double() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.double() / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    return kl.mean().item()


def per_class_accuracy(logits: Tensor, targets: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy on the samples of each true class; ``None`` for a class absent from ``targets``."""
    correct = logits.argmax(-1) == targets
    result: list[float | None] = []
    for cls in range(num_classes):
        members = targets == cls
        result.append(correct[members].double().mean().item() if members.any() else None)
    return result


def confusion_matrix(logits: Tensor, targets: Tensor, num_classes: int) -> list[list[int]]:
    """Counts ``[true class][predicted class]``; row
    ``i`` sums to the number of class-``i`` samples."""
    predicted = logits.argmax(-1)
    flat = torch.bincount(
        targets.long() * num_classes + predicted, minlength=num_classes * num_classes
    )
    return flat.view(num_classes, num_classes).tolist()


def reliability(logits: Tensor, targets: Tensor, *, bins: int = ECE_BINS) -> dict:
    """Reliability-diagram data: per confidence bin (see ``BINNING``) the sample count, accuracy
    and mean top-1 confidence (``None`` in empty bins), with the ``bins + 1`` edges."""
    probs = F.softmax(logits.double(), dim=-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == targets).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # right=False: index i means edges[i] < c <= edges[i+1]; a confidence of exactly 0 cannot
    # occur after a softmax, and 1.0 falls in the last bin.
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(index, minlength=bins)
    hits = torch.bincount(index, weights=correct, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "accuracy": [h / n if n else None for h, n in zip(hits.tolist(), count.tolist())],
        "confidence": [c / n if n else None for c, n in zip(conf_sum.tolist(), count.tolist())],
    }


def expected_calibration_error(logits: Tensor, targets: Tensor, *, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (see ``BINNING``), a fraction in [0, 1]."""
    table = reliability(logits, targets, bins=bins)
    total = sum(table["count"])
    return sum(
        n / total * abs(acc - conf)
        for n, acc, conf in zip(table["count"], table["accuracy"], table["confidence"])
        if n
    )


# --- one run ---------------------------------------------------------------------------------


def diagnose(
    models: Mapping[str, torch.nn.Module],
    loader,
    *,
    num_classes: int,
    history: list[dict] = (),
    terms: Iterable = (),
    class_names: list[str] | None = None,
    split: str = "test",
) -> dict:
    """Diagnostics of ``models`` (``teacher``, ``scratch``, ``student``) on one split, plus the
    training facts the likely-cause analysis needs (from ``history``, the metrics log, and the
    distillation ``terms``). Everything returned is JSON-ready."""
    from kdistill.evaluation.classification import predict

    logits, targets = {}, None
    for role, model in models.items():
        logits[role], targets = predict(model.eval().cpu(), loader)
    teacher = logits.get("teacher")
    students = [role for role in logits if role != "teacher"]
    result = {
        "split": split,
        "n": len(targets),
        "binning": BINNING,
        "class_names": list(class_names or [str(c) for c in range(num_classes)]),
        "ece": {role: expected_calibration_error(value, targets) for role, value in logits.items()},
        "mean_confidence": {
            role: F.softmax(value.double(), -1).max(-1).values.mean().item()
            for role, value in logits.items()
        },
        "per_class_accuracy": {
            role: per_class_accuracy(value, targets, num_classes) for role, value in logits.items()
        },
        "confusion": {
            role: confusion_matrix(value, targets, num_classes) for role, value in logits.items()
        },
        "reliability": {role: reliability(value, targets) for role, value in logits.items()},
    }
    if teacher is not None:
        result["agreement"] = {role: agreement(logits[role], teacher) for role in students}
        result["kl_to_teacher"] = {role: mean_kl(logits[role], teacher) for role in students}
    result["training"] = training_facts(history)
    result["distill"] = describe_terms(terms)
    return result


def describe_terms(terms: Iterable) -> dict:
    """The distillation objective as plain data: each term's loss, weight and settings."""
    described = []
    for term in terms:
        loss = getattr(term.loss, "__name__", type(term.loss).__name__)
        params = {k: v for k, v in term.params.items() if isinstance(v, (int, float, str, bool))}
        described.append(
            {
                "name": term.name,
                "loss": loss,
                "weight": term.weight,
                "uses_teacher": bool(term.takes_teacher),
                "params": params,
            }
        )
    temperatures = [
        t["params"]["temperature"]
        for t in described
        if t["uses_teacher"] and "temperature" in t["params"]
    ]
    return {"terms": described, "temperature": temperatures[0] if temperatures else None}


def training_facts(history: Iterable[dict], *, last: int = 3) -> dict:
    """Per phase: epochs, final training and validation scores, each loss term at the last epoch
    and its relative change over the last ``last`` epochs (negative: still falling)."""
    facts: dict[str, dict] = {}
    by_phase: dict[str, list[dict]] = {}
    for record in history:
        by_phase.setdefault(record["phase"], []).append(record)
    for phase, records in by_phase.items():
        final = records[-1]
        window = records[-min(last, len(records) - 1) - 1 :] if len(records) > 1 else records
        losses = {k: final[k] for k in final if k.startswith("loss/")}
        change = {
            k: (window[-1][k] - window[0][k]) / abs(window[0][k])
            for k in losses
            if len(window) > 1 and window[0].get(k)
        }
        facts[phase] = {
            "epochs": final["epoch"],
            "train_accuracy": final.get("train/accuracy"),
            "val": {k.removeprefix("val/"): v for k, v in final.items() if k.startswith("val/")},
            "loss": final.get("loss"),
            "losses": losses,
            "loss_change": change,
            "change_epochs": len(window) - 1,
            "train_accuracy_change": (
                final["train/accuracy"] - window[0]["train/accuracy"]
                if len(window) > 1 and "train/accuracy" in final and "train/accuracy" in window[0]
                else None
            ),
        }
    return facts


# --- why distillation did not help -------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def distillation_helped(summary: dict) -> bool:
    """Whether the distilled student beat the scratch one beyond the noise: the paired 95 %
    interval of the test difference excludes zero on the good side."""
    return bool((summary.get("comparisons") or {}).get("student_vs_scratch", {}).get("better"))


def likely_causes(summary: dict) -> list[str]:
    """Sentences naming the usual reasons distillation does not beat the scratch student (teacher
    accuracy, capacity gap, temperature, term weights, under-training, sampling noise), each
    stated only when this run's numbers point to it, and each quoting those numbers."""
    task = summary.get("task") or {
        "metrics": ["accuracy"],
        "higher_is_better": {"accuracy": True},
        "percent": ["accuracy"],
    }
    headline = task["metrics"][0]
    higher = task["higher_is_better"][headline]
    percent = headline in task.get("percent", [])
    show = _pct if percent else (lambda v: f"{v:.4f}")
    teacher, scratch, student = (summary[r][headline] for r in ("teacher", "scratch", "student"))
    diagnostics = summary.get("diagnostics") or {}
    training = diagnostics.get("training") or {}
    distill = diagnostics.get("distill") or {}
    causes = []

    lead = (teacher - scratch) if higher else (scratch - teacher)
    if lead <= 0:
        causes.append(
            f"Teacher accuracy: the teacher's test {headline} "
            f"({show(teacher)}) is no better than the student trained alone ({show(scratch)}), so "
            "it has nothing better to teach; train it "
            "longer (teacher.epochs) or choose a stronger teacher."
        )
    elif percent and lead < 0.01:
        causes.append(
            "Teacher accuracy: the teacher leads the scratch "
            f"student by only {100 * lead:.2f} points ({show(teacher)} "
            f"vs {show(scratch)}), which leaves little to gain."
        )

    ratio = summary["teacher"]["params"] / max(summary["student"]["params"], 1)
    agree = diagnostics.get("agreement") or {}
    kl = diagnostics.get("kl_to_teacher") or {}
    if ratio >= CAPACITY_RATIO:
        following = (
            "; the distilled student matches the teacher's "
            f"top-1 prediction on {_pct(agree['student'])} of the "
            f"{diagnostics.get('split', 'test')} samples (mean KL {kl['student']:.3f} nats)"
            if "student" in agree and "student" in kl
            else ""
        )
        causes.append(
            f"Capacity gap: the teacher has {ratio:.0f}× the student's parameters "
            f"(≥{CAPACITY_RATIO:.0f}× is where a gap often "
            f"hurts){following}. A smaller or intermediate "
            "teacher (teacher assistant, Mirzadeh et al., "
            "AAAI 2020) or a wider student may distil better."
        )

    if "student" in agree and "scratch" in agree and agree["student"] <= agree["scratch"] + 0.005:
        causes.append(
            "Weak transfer: the distilled student agrees "
            f"with the teacher on {_pct(agree['student'])} of samples, no more than the scratch "
            f"student does ({_pct(agree['scratch'])}): the "
            "distillation terms barely moved it towards the teacher."
        )

    terms = distill.get("terms") or []
    teacher_weight = sum(t["weight"] for t in terms if t["uses_teacher"])
    label_weight = sum(t["weight"] for t in terms if not t["uses_teacher"])
    temperature = distill.get("temperature")
    if temperature is not None:
        low, high = TEMPERATURE_RANGE
        confident = (diagnostics.get("mean_confidence") or {}).get("teacher")
        # Without a label term (function matching: Beyer et al., CVPR 2022) the student learns the
        # teacher's distribution itself, for which T = 1 is the natural setting, not a fault.
        if temperature < low and (label_weight > 0 or not terms):
            mean_top1 = (
                f" (mean top-1 probability {confident:.3f} on the test split)"
                if confident is not None
                else ""
            )
            causes.append(
                f"Temperature: T={temperature:g} keeps the teacher's soft targets close to one-hot"
                f"{mean_top1}, so they add little beyond "
                "the labels; T between 2 and 8 (4 is common) "
                "exposes more of the teacher's class similarities."
            )
        elif temperature > high:
            causes.append(
                f"Temperature: T={temperature:g} flattens "
                "the teacher's distribution towards uniform; try T between 2 and 8 (4 is common)."
            )

    phase = training.get("student") or {}
    teacher_terms = [t["name"] for t in terms if t["uses_teacher"]]
    share = None
    if phase.get("loss") and teacher_terms:
        share = sum(phase["losses"].get(f"loss/{n}", 0.0) for n in teacher_terms) / phase["loss"]
    if terms and (
        teacher_weight < label_weight or (share is not None and share < LOW_DISTILL_SHARE)
    ):
        made = (
            f" and made {100 * share:.0f}% of the final training loss" if share is not None else ""
        )
        causes.append(
            f"Term weights: the distillation terms ({', '.join(teacher_terms) or 'none'}) weigh "
            f"{teacher_weight:g} against {label_weight:g} "
            f"for the label terms{made}; raise distill.alpha (or the term weights) so the "
            "teacher's signal is not drowned out."
        )
    elif terms and label_weight == 0 and lead <= 0:
        causes.append(
            "Term weights: with no label term the student copies a teacher that is worse than it "
            "could become alone; keep some cross-entropy (distill.alpha < 1)."
        )

    still_falling = {
        k.removeprefix("loss/"): v
        for k, v in (phase.get("loss_change") or {}).items()
        if v <= -STILL_FALLING and k.removeprefix("loss/") in teacher_terms + ["ce"]
    }
    rising = phase.get("train_accuracy_change")
    if still_falling or (
        rising is not None and rising > 0.01 and (phase.get("train_accuracy") or 1) < 0.99
    ):
        parts = [f"the {name} term fell {-100 * v:.0f}%" for name, v in still_falling.items()]
        if rising is not None and rising > 0.01:
            parts.append(
                f"training accuracy rose {100 * rising:.1f} points to "
                f"{_pct(phase['train_accuracy'])}"
            )
        span = "epoch" if phase["change_epochs"] == 1 else f"{phase['change_epochs']} epochs"
        joined = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        causes.append(
            f"Under-training: over the last {span} of {phase['epochs']}, {joined}; the student had "
            "not converged. Train longer (train.epochs)."
        )

    n = diagnostics.get("n") or (summary.get("data", {}).get("sizes", {}).get("test"))
    paired = (summary.get("comparisons") or {}).get("student_vs_scratch")
    if paired is not None:  # the paired interval, sharper than two unpaired standard errors
        if not (paired["better"] or paired["worse"]):
            scale = 100 if percent else 1
            low, high = (scale * v for v in paired["ci"])
            interval = f"95 % paired interval [{low:+.3g}, {high:+.3g}]"
            if (low > 0 or high < 0) and "mcnemar_p" in paired:  # the two tests disagree
                found = (
                    f"the difference's {interval} excludes zero, but McNemar's exact test on "
                    f"the {sum(paired['discordant'])} samples the students disagree on does not "
                    f"confirm it (p = {paired['mcnemar_p']:.2g})"
                )
            else:
                found = f"the difference's {interval} includes zero"
            causes.append(
                f"Sampling noise: {found} on {paired['units']:,} {paired['unit']}; repeat with "
                "several seeds (train.seed) or a larger test split before concluding."
            )
    elif percent and n:
        noise = 2 * math.sqrt((scratch * (1 - scratch) + student * (1 - student)) / n)
        if abs(student - scratch) <= noise:
            causes.append(
                "Sampling noise: the difference "
                f"({100 * (student - scratch):+.2f} points) is within two standard errors "
                f"(±{100 * noise:.2f} points) "
                f"on {n} test samples; repeat with several seeds (train.seed) before concluding."
            )
    if not causes:
        causes.append(
            "None of the usual causes stands out in this "
            f"run's numbers (teacher ahead, capacity ratio {ratio:.1f}×, temperature and weights "
            "in the usual range, training converged); try "
            "several seeds, or another method."
        )
    return causes
