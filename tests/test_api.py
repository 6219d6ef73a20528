"""`kdistill.distill`: the one-call path on real data (sklearn digits)."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdistill
from kdistill import Distiller, create_model, distill, evaluate, fit
from kdistill.data import load_dataset
from kdistill.errors import ArgumentError
from kdistill.methods import scratch
from kdistill.training.acceleration import make_accelerator


def test_distill_one_call_trains_student_and_keeps_teacher():
    splits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", width=128, input_shape=(1, 8, 8))
    loader = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(Distiller(teacher, scratch()), loader, epochs=5, accelerator=make_accelerator("cpu"), progress=False)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    student = create_model("mlp", width=16, input_shape=(1, 8, 8))
    # plain tensors and a dataset of (x, y) pairs both work
    x, y = splits.train.inputs, splits.train.targets
    val = TensorDataset(splits.val.inputs, splits.val.targets)
    result = distill(teacher, student, (x, y), val, temperature=4.0, alpha=0.9, epochs=8, lr=3e-3, progress=False)

    assert result.student is student
    assert len(result.history) == 8 and {"loss/ce", "loss/kd"} <= set(result.history[0])
    assert 0.8 < result.metrics["val/accuracy"] <= 1.0  # the student learned digits
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    test = evaluate(student, DataLoader(splits.test, batch_size=256))
    assert test["accuracy"] > 0.8


def test_public_api_is_explicit():
    for name in kdistill.__all__:
        assert hasattr(kdistill, name), name
    assert {"distill", "Distiller", "fit", "evaluate", "FeatureTap", "create_model", "list_models", "load_config"} <= set(kdistill.__all__)


def digits_pair(epochs: int = 3):
    splits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", width=64, input_shape=(1, 8, 8))
    loader = DataLoader(splits.train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    fit(Distiller(teacher, scratch()), loader, epochs=epochs, accelerator=make_accelerator("cpu"),
        progress=False)
    return splits, teacher, create_model("mlp", width=16, input_shape=(1, 8, 8))


def test_baseline_is_the_same_student_on_the_same_budget_without_the_teacher():
    splits, teacher, student = digits_pair()
    train = (splits.train.inputs, splits.train.targets)
    val = (splits.val.inputs, splits.val.targets)
    # alpha=0 leaves only the label term: the distilled student then is the scratch student,
    # bit for bit, only if both start from the same weights and see the same batches and steps.
    result = distill(teacher, student, train, val, alpha=0.0, epochs=2, lr=3e-3, progress=False,
                     baseline=True)
    assert result.baseline is not student and len(result.baseline_history) == 2
    assert "loss/kd" not in result.baseline_history[0]
    scratch_state = result.baseline.state_dict()
    assert all(torch.equal(v, scratch_state[k]) for k, v in student.state_dict().items())
    assert result.comparison["difference"] == 0 and result.comparison["ci"] == [0.0, 0.0]
    assert result.comparison["mcnemar_p"] == 1.0
    assert result.baseline_metrics["val/accuracy"] == result.metrics["val/accuracy"] > 0.5
    assert result.verdict.startswith(
        "No significant difference between the distilled and the scratch student")
    shown = repr(result)
    rows = [line.split()[0] for line in shown.splitlines()[1:4]]
    assert rows == ["teacher", "scratch", "distilled"]
    assert f"{100 * result.teacher_metrics['val/accuracy']:.2f}%" in shown
    assert shown.splitlines()[-1] == result.verdict and "95 % CI [+0, +0]" in result.verdict


def test_baseline_blames_the_student_settings_when_neither_student_learns():
    # Inputs carry nothing: every model predicts one class, a third of the balanced labels.
    x = torch.zeros(300, 1, 4, 4)
    y = torch.arange(300) % 3
    torch.manual_seed(0)
    teacher, student = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
                        for _ in range(2))
    result = distill(teacher, student, (x, y), (x, y), epochs=1, lr=1e-3, progress=False,
                     baseline=True)
    assert result.metrics["val/accuracy"] == pytest.approx(1 / 3)
    assert result.baseline_metrics["val/accuracy"] == pytest.approx(1 / 3)
    assert result.verdict.startswith(
        "Neither student learned (distilled 33.3%, scratch 33.3%; chance is 33.3%")
    assert "lr=0.001, epochs=1" in result.verdict and "not distillation" in result.verdict


def test_baseline_needs_validation_data():
    splits, teacher, student = digits_pair(epochs=1)
    with pytest.raises(ArgumentError, match="baseline=True compares the students on val_data"):
        distill(teacher, student, (splits.train.inputs, splits.train.targets), baseline=True,
                progress=False)
