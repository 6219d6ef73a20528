"""Diagnostics: calibration, agreement, KL, per-class accuracy and confusion on constructed logits
whose answers are known, and the verdict's wording, helped or not, from constructed summaries."""

import math

import pytest
import torch

from kdistill.evaluation.diagnostics import (
    ECE_BINS,
    agreement,
    confusion_matrix,
    expected_calibration_error,
    likely_causes,
    mean_kl,
    per_class_accuracy,
    reliability,
    training_facts,
)
from kdistill.losses import kd
from kdistill.report import verdict


def logits_with(confidence: float, n: int, correct: int, num_classes: int = 2):
    """``n`` samples predicting class 0 with top-1 probability ``confidence``; the first
    ``correct`` of them are labelled 0 (right), the rest 1 (wrong)."""
    rest = (1 - confidence) / (num_classes - 1)
    probs = torch.tensor([[confidence] + [rest] * (num_classes - 1)] * n, dtype=torch.float64)
    targets = torch.tensor([0] * correct + [1] * (n - correct))
    return probs.log(), targets  # softmax(log p) = p


def test_ece_of_a_perfectly_calibrated_model_is_zero():
    # Two confidence levels in different bins, each right exactly as often as it claims.
    a_logits, a_targets = logits_with(0.8, 50, 40)
    b_logits, b_targets = logits_with(0.6, 50, 30)
    logits, targets = torch.cat([a_logits, b_logits]), torch.cat([a_targets, b_targets])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_value_and_reliability_bins():
    # 50 samples at confidence 0.9 but only half right (gap 0.4); 50 at 0.7, 70% right (gap 0).
    a_logits, a_targets = logits_with(0.9, 50, 25)
    b_logits, b_targets = logits_with(0.7, 50, 35)
    logits, targets = torch.cat([a_logits, b_logits]), torch.cat([a_targets, b_targets])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.5 * 0.4, abs=1e-12)
    table = reliability(logits, targets)
    assert len(table["edges"]) == ECE_BINS + 1 and sum(table["count"]) == 100
    high, low = math.ceil(0.9 * ECE_BINS) - 1, math.ceil(0.7 * ECE_BINS) - 1  # (lower, upper] bins
    assert table["count"][high] == 50 and table["count"][low] == 50
    assert table["accuracy"][high] == pytest.approx(0.5) and table["confidence"][
        high
    ] == pytest.approx(0.9)
    assert table["accuracy"][0] is None  # empty bins carry no made-up values


def test_confidence_one_falls_in_the_last_bin():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]])
    table = reliability(logits, torch.tensor([0, 0]))
    assert table["count"][-1] == 2 and table["accuracy"][-1] == pytest.approx(0.5)
    assert expected_calibration_error(logits, torch.tensor([0, 0])) == pytest.approx(0.5)


def test_agreement_and_kl_properties():
    torch.manual_seed(0)
    teacher = torch.randn(64, 10)
    assert agreement(teacher, teacher) == 1.0
    assert agreement(3 * teacher + 1, teacher) == 1.0  # same argmax, different confidence
    assert mean_kl(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    student = torch.randn(64, 10)
    assert 0.0 <= agreement(student, teacher) <= 1.0
    forward = mean_kl(student, teacher)
    assert forward > 0 and forward != pytest.approx(mean_kl(teacher, student))  # KL is directed
    # KL(p_T ‖ p_S) at T=1 is exactly Hinton's kd loss at T=1 (T² = 1).
    assert forward == pytest.approx(
        kd(student.double(), teacher.double(), temperature=1.0).item(), rel=1e-9
    )


def test_per_class_accuracy_and_confusion():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    assert per_class_accuracy(logits, targets, 4) == [pytest.approx(2 / 3), 0.5, 1.0, None]
    matrix = confusion_matrix(logits, targets, 4)
    assert matrix == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert [sum(row) for row in matrix] == [3, 2, 1, 0]
    assert sum(matrix[i][i] for i in range(4)) == int((predicted == targets).sum())


def test_training_facts_read_the_last_epochs():
    history = [
        {
            "phase": "student",
            "epoch": e,
            "loss": 1.0 / e,
            "loss/ce": 0.2 / e,
            "loss/kd": 0.8 / e,
            "train/accuracy": 0.5 + 0.1 * e,
            "val/accuracy": 0.4 + 0.1 * e,
        }
        for e in range(1, 5)
    ]
    facts = training_facts(history)["student"]
    assert facts["epochs"] == 4 and facts["change_epochs"] == 3
    assert facts["loss_change"]["loss/kd"] == pytest.approx((0.8 / 4 - 0.8) / 0.8)
    assert facts["train_accuracy_change"] == pytest.approx(0.3)
    assert facts["val"]["accuracy"] == pytest.approx(0.8)


# --- the verdict -------------------------------------------------------------------------------


def summary(
    *,
    teacher=0.95,
    scratch=0.90,
    student=0.93,
    teacher_params=1_000_000,
    student_params=100_000,
    temperature=4.0,
    kd_weight=0.9,
    ce_weight=0.1,
    agree_student=0.95,
    agree_scratch=0.90,
    kd_change=-0.01,
    n=10_000,
    ci=None,
    mcnemar_p=1e-20,
    validation=None,
):
    training = {
        "student": {
            "epochs": 30,
            "train_accuracy": 0.999,
            "val": {"accuracy": student},
            "loss": 0.5,
            "losses": {"loss/ce": 0.05, "loss/kd": 0.45},
            "loss_change": {"loss/ce": -0.01, "loss/kd": kd_change},
            "change_epochs": 3,
            "train_accuracy_change": 0.001,
        }
    }
    return {
        "name": "toy",
        "method": "kd",
        "task": {
            "name": "classification",
            "metrics": ["accuracy"],
            "higher_is_better": {"accuracy": True},
            "percent": ["accuracy"],
        },
        "teacher": {"accuracy": teacher, "params": teacher_params},
        "scratch": {"accuracy": scratch, "params": student_params},
        "student": {"accuracy": student, "params": student_params},
        "comparisons": {"student_vs_scratch": comparison(student - scratch, ci, mcnemar_p, n)},
        "validation": validation or {},
        "diagnostics": {
            "split": "test",
            "n": n,
            "agreement": {"scratch": agree_scratch, "student": agree_student},
            "kl_to_teacher": {"scratch": 0.4, "student": 0.2},
            "mean_confidence": {"teacher": 0.99},
            "training": training,
            "distill": {
                "temperature": temperature,
                "terms": [
                    {
                        "name": "ce",
                        "loss": "cross_entropy",
                        "weight": ce_weight,
                        "uses_teacher": False,
                        "params": {},
                    },
                    {
                        "name": "kd",
                        "loss": "kd",
                        "weight": kd_weight,
                        "uses_teacher": True,
                        "params": {"temperature": temperature},
                    },
                ],
            },
        },
    }


def comparison(difference, ci=None, mcnemar_p=1e-20, n=10_000):
    """A student-vs-scratch entry as ``evaluation.paired.compare`` writes it."""
    low, high = ci or (difference - 0.005, difference + 0.005)
    return {
        "metric": "accuracy",
        "difference": difference,
        "ci": [low, high],
        "level": 0.95,
        "resamples": 4000,
        "seed": 0,
        "units": n,
        "unit": "test samples",
        "better": low > 0 and mcnemar_p < 0.05,  # both tests, as compare() decides
        "worse": high < 0 and mcnemar_p < 0.05,
        "mcnemar_p": mcnemar_p,
        "discordant": [12, 5],
    }


def test_verdict_when_distillation_helped():
    text = verdict(summary())
    assert text.startswith("Distillation helped") and "+3 points" in text
    assert "95 % CI [+2.5, +3.5]" in text and "McNemar p = 1e-20" in text
    assert "10,000 test samples" in text
    assert "recovering 60% of the teacher–scratch gap" in text and "10.0× fewer parameters" in text
    assert "Likely causes" not in text


def test_verdict_names_each_cause_from_the_numbers():
    bad = summary(
        teacher=0.88,
        scratch=0.90,
        student=0.85,
        teacher_params=5_000_000,
        temperature=1.0,
        kd_weight=0.2,
        ce_weight=0.8,
        agree_student=0.80,
        agree_scratch=0.81,
        kd_change=-0.3,
    )
    bad["diagnostics"]["training"]["student"]["losses"] = {"loss/ce": 0.48, "loss/kd": 0.02}
    text = verdict(bad)
    lines = text.splitlines()
    assert lines[0].startswith(
        "Distillation did worse than the scratch student (test accuracy -5 points, 95 % CI"
    )
    causes = [line for line in lines[1:] if line.startswith("- ")]
    assert len(causes) == len(lines) - 1
    found = {c[2:].split(":")[0] for c in causes}
    assert {
        "Teacher accuracy",
        "Capacity gap",
        "Weak transfer",
        "Temperature",
        "Term weights",
        "Under-training",
    } <= found
    assert "88.00%" in text and "90.00%" in text  # the teacher's and the scratch student's scores
    assert "50×" in text  # the parameter ratio
    assert "T=1" in text and "0.990" in text  # the temperature and the teacher's confidence
    assert "4% of the final training loss" in text
    assert "fell 30%" in text
    assert "Sampling noise" not in text  # 5 points on 10,000 samples is far outside the noise


def test_verdict_blames_noise_and_nothing_else_when_the_numbers_are_fine():
    close = summary(scratch=0.90, student=0.899, teacher_params=400_000, n=500)
    causes = likely_causes(close)
    assert (
        len(causes) == 1
        and causes[0].startswith("Sampling noise")
        and "500 test samples" in causes[0]
    )
    assert "paired interval [-0.6, +0.4]" in causes[0]
    # A paired interval that excludes zero is not noise, even where two unpaired errors would be.
    beyond = summary(
        scratch=0.90, student=0.885, teacher_params=400_000, n=500, ci=(-0.025, -0.005)
    )
    assert not any(cause.startswith("Sampling noise") for cause in likely_causes(beyond))
    # The interval excludes zero but McNemar's test does not agree: noise, and said as it is.
    split = summary(scratch=0.90, student=0.935, n=200, ci=(0.005, 0.07), mcnemar_p=0.065)
    noise = likely_causes(split)[-1]
    assert noise.startswith("Sampling noise") and "includes zero" not in noise
    assert "[+0.5, +7] excludes zero, but McNemar's exact test on the 17 samples" in noise
    assert "(p = 0.065)" in noise
    clean = summary(scratch=0.90, student=0.80, teacher_params=400_000)
    assert likely_causes(clean)[0].startswith("None of the usual causes")


def test_causes_work_without_diagnostics():
    plain = summary(teacher=0.5, scratch=0.9, student=0.8)
    del plain["diagnostics"]
    causes = likely_causes(plain)
    assert causes[0].startswith("Teacher accuracy")


def test_function_matching_at_t1_is_not_blamed_on_its_temperature():
    # No label term: the student learns the teacher's distribution itself (Beyer et al.), at T = 1.
    matching = summary(scratch=0.90, student=0.899, temperature=1.0, kd_weight=1.0, ce_weight=0.0)
    matching["diagnostics"]["distill"]["terms"] = matching["diagnostics"]["distill"]["terms"][1:]
    assert not any(cause.startswith("Temperature") for cause in likely_causes(matching))
    with_labels = summary(scratch=0.90, student=0.899, temperature=1.0)
    assert any(cause.startswith("Temperature: T=1 keeps") for cause in likely_causes(with_labels))


def test_verdict_says_no_significant_difference_when_the_interval_holds_zero():
    # The demo: +0.3 points on 1,000 digits is within the noise, so not "helped".
    close = summary(scratch=0.965, student=0.968, n=1000, ci=(-0.004, 0.010), mcnemar_p=0.51)
    text = verdict(close)
    assert "helped" not in text
    assert text.startswith(
        "No significant difference between the distilled and the scratch student (test accuracy "
        "+0.3 points, 95 % CI [-0.4, +1], McNemar p = 0.51, paired over 1,000 test samples)."
    )


def test_verdict_points_out_validation_curves_that_disagree():
    # The demo: the scratch student ends higher on validation (0.990 vs 0.968).
    disagree = summary(validation={"scratch": 0.990, "student": 0.968})
    first = verdict(disagree).splitlines()[0]
    assert first.startswith("Distillation helped")
    assert (
        "the scratch student's final validation accuracy (99.00%) is better than the distilled "
        "student's (96.80%), while the test set favours the distilled student"
    ) in first
    agree = summary(validation={"scratch": 0.90, "student": 0.93})
    assert "validation curves" not in verdict(agree)
