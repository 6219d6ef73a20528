"""Transfer sets from Python (issue 29, items 1 and 2): ``distill(..., unlabelled=...)`` takes
inputs without labels, shares the recipes' code (``kdistill.data.transfer``), states both set
sizes, and gives the scratch baseline the same optimizer steps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import kdistill
from kdistill import Distiller
from kdistill.data.transfer import UNLABELLED, BudgetSampler
from kdistill.errors import ArgumentError, DataError
from kdistill.models import create_model


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target


def models(seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_model("mlp", num_classes=10, input_shape=(64,), width=32)
    student = create_model("mlp", num_classes=10, input_shape=(64,), width=8)
    return teacher, student


def quiet(**extra) -> dict:
    return {"epochs": 1, "batch_size": 32, "progress": False, **extra}


def test_distill_learns_from_a_transfer_set_and_the_baseline_takes_the_same_steps(
    digits, monkeypatch
):
    x, y = digits
    seen = {"distilled": 0, "scratch": 0, "scratch_batches": 0, "distilled_batches": 0}
    forward = Distiller.forward

    def spy(self, batch, teacher_out=None, shares=None):
        role = "distilled" if self.needs_teacher else "scratch"
        seen[role] += int((batch["target"] == UNLABELLED).sum())
        seen[f"{role}_batches"] += 1
        return forward(self, batch, teacher_out, shares)

    monkeypatch.setattr(Distiller, "forward", spy)
    teacher, student = models()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inputs alone: nothing to say
        result = kdistill.distill(
            teacher,
            student,
            (x[:100], y[:100]),
            (x[1500:], y[1500:]),
            unlabelled=torch.from_numpy(x[100:1500]),
            baseline=True,
            **quiet(),
        )
    assert result.data == {
        "labelled": 100,
        "unlabelled": 1400,
        "labelled_share": None,
        "steps_per_epoch": 47,  # ceil(1,500 / 32)
    }
    # the distilled student learnt from each transfer sample once; the scratch student saw none,
    # and took as many steps, going over its 100 labelled samples 15 times
    assert seen == {"distilled": 1400, "scratch": 0, "distilled_batches": 47, "scratch_batches": 47}
    assert result.history[-1]["samples"] == result.baseline_history[-1]["samples"] == 1500
    assert "100 labelled + 1,400 unlabelled" in repr(result)
    assert "47 optimizer steps per epoch" in repr(result)


def test_labels_in_the_transfer_set_are_ignored_with_one_warning(digits):
    x, y = digits
    pairs = (x[100:400], y[100:400])
    rows = [{"x": torch.from_numpy(row), "label": int(label)} for row, label in zip(*pairs)]
    for unlabelled in (pairs, rows, TensorDataset(*map(torch.as_tensor, pairs))):
        teacher, student = models()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = kdistill.distill(
                teacher, student, (x[:100], y[:100]), unlabelled=unlabelled, cache=True, **quiet()
            )
        said = [str(w.message) for w in caught if "ignored" in str(w.message)]
        assert len(said) == 1 and said[0].startswith("unlabelled:"), said
        assert result.data["unlabelled"] == 300


def test_labelled_share_sets_the_mix_of_each_epoch():
    generator = torch.Generator().manual_seed(0)
    drawn = list(BudgetSampler(100, 900, 1000, 0.25, generator))
    labelled = [i for i in drawn if i < 100]
    assert len(drawn) == 1000 and len(labelled) == 250
    assert sorted(set(labelled)) == list(range(100))  # each labelled sample, 2 or 3 times
    unlabelled = [i for i in drawn if i >= 100]  # 750 of one permutation of the 900
    assert len(set(unlabelled)) == 750 and max(unlabelled) < 1000
    assert sorted(BudgetSampler(100, 900, 1000, None, generator)) == list(range(1000))
    scratch = sorted(BudgetSampler(100, 0, 1000, None, generator))
    assert scratch == sorted(list(range(100)) * 10)  # the labelled alone, ten times over


def test_distill_with_a_labelled_share(digits):
    x, y = digits
    teacher, student = models()
    result = kdistill.distill(
        teacher, student, (x[:100], y[:100]), unlabelled=x[100:500], labelled_share=0.5, **quiet()
    )
    assert result.data["labelled_share"] == 0.5
    assert result.data["steps_per_epoch"] == 16  # ceil(500 / 32)


@pytest.mark.parametrize(
    "given, error, fragments",
    [
        ({"unlabelled": np.zeros((0, 64), np.float32)}, DataError, ("unlabelled", "empty")),
        ({"unlabelled": np.zeros((5, 63), np.float32)}, DataError, ("(63,)", "(64,)")),
        ({"unlabelled": "test"}, DataError, ("unlabelled", "identical to test samples")),
        ({"unlabelled": {"x": 1}}, DataError, ("unlabelled", "dataset")),
        ({"labelled_share": 0.5}, ArgumentError, ("labelled_share", "unlabelled=")),
        (
            {"unlabelled": "pool", "labelled_share": 1.5},
            ArgumentError,
            ("labelled_share", "between 0 and 1"),
        ),
        (
            {"unlabelled": "pool", "train_data": "loader"},
            ArgumentError,
            ("train_data", "DataLoader"),
        ),
    ],
)
def test_distill_refuses_a_bad_transfer_set_in_one_line(digits, given, error, fragments):
    x, y = digits
    train, val = (x[:100], y[:100]), (x[1500:], y[1500:])
    given = dict(given)
    named = {"test": np.concatenate([x[100:200], x[1600:1603]]), "pool": x[100:200]}
    if isinstance(given.get("unlabelled"), str):
        given["unlabelled"] = named[given["unlabelled"]]
    if given.pop("train_data", None) == "loader":
        train = DataLoader(TensorDataset(torch.from_numpy(x[:100]), torch.from_numpy(y[:100])))
    teacher, student = models()
    with pytest.raises(error) as raised:
        kdistill.distill(teacher, student, train, val, **given, **quiet())
    message = str(raised.value)
    assert "\n" not in message and all(part in message for part in fragments), message
