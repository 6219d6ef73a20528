"""Recommendation: MovieLens-100K from the recbole wheel (leave-one-out by time, 99 sampled
negatives), HR@10 / NDCG@10 / RMSE, rating and ranking distillation losses, NeuMF, and the
recipe end to end."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from kdistill.cli import main
from kdistill.data import load_dataset
from kdistill.data.movielens import read_interactions, sample_unrated
from kdistill.errors import DataError
from kdistill.evaluation import TASKS
from kdistill.evaluation.ranking import evaluate_ranking, held_out_rank, hit_rate, ndcg, rmse
from kdistill.losses import LOSSES
from kdistill.losses.ranking import (
    listwise_kd,
    preference_bce,
    ranking_distillation,
    rating_distillation,
    rating_mse,
)
from kdistill.methods import Term
from kdistill.models import create_model
from kdistill.teachers.cache import TeacherCache


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens")


def raw_table():
    spec = importlib.util.find_spec("recbole")
    root = next(iter(spec.submodule_search_locations))
    return read_interactions(f"{root}/dataset_example/ml-100k/ml-100k.inter")


def scores(rating, preference):
    return torch.stack(
        [
            torch.as_tensor(rating, dtype=torch.float64),
            torch.as_tensor(preference, dtype=torch.float64),
        ],
        dim=-1,
    )


# --- metrics ----------------------------------------------------------------------------------


def test_hr_and_ndcg_on_a_constructed_ranking():
    held_out_scores = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0] + [0.0] * 96,  # held-out item first: rank 0
            [5.0, 6.0, 7.0, 8.0] + [0.0] * 96,  # three items above it: rank 3
            [0.5] + [1.0] * 12 + [0.0] * 87,  # twelve above it: rank 12, outside the top 10
            [1.0, 1.0] + [0.0] * 98,  # a tie counts against it: rank 1
        ]
    )
    ranks = held_out_rank(held_out_scores)
    assert ranks.tolist() == [0, 3, 12, 1]
    assert hit_rate(ranks, 10) == pytest.approx(3 / 4)
    assert ndcg(ranks, 10) == pytest.approx(
        (1 / math.log2(2) + 1 / math.log2(5) + 0 + 1 / math.log2(3)) / 4
    )
    assert hit_rate(ranks, 1) == pytest.approx(1 / 4) and ndcg(ranks, 1) == pytest.approx(1 / 4)
    assert held_out_rank(torch.zeros(2, 100)).tolist() == [99, 99]  # constant scores rank last
    assert rmse(torch.tensor([3.0, 5.0]), torch.tensor([4.0, 2.0])) == pytest.approx(
        math.sqrt((1 + 9) / 2)
    )


class FixedScores(torch.nn.Module):
    """A recommender that returns the scores it was built with, row by row of its input."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, rows):
        return self.table[rows]


def test_ranking_outcomes_are_each_users_hit():
    preference = torch.zeros(4, 100)
    preference[:, 0] = torch.tensor([9.0, 0.5, 9.0, -1.0])  # users 1 and 3 rank it last
    preference[:, 1:] = torch.rand(4, 99)
    model = FixedScores(scores(torch.zeros(4, 100), preference).float())
    batches = [{"input": torch.arange(4), "target": torch.zeros(4, 100)}]
    result = evaluate_ranking(model, batches, outcomes=True)
    hits = result["outcomes"]
    assert hits.values.tolist() == [1, 0, 1, 0] and hits.unit == "users"
    assert hits.score() == pytest.approx(result["hr@10"]) == pytest.approx(0.5)


def test_rating_task_directions_and_scratch_terms():
    task = TASKS["rating"]
    assert task.metrics == ("hr@10", "ndcg@10", "rmse") and task.headline == "hr@10"
    assert task.higher_is_better["ndcg@10"] and not task.higher_is_better["rmse"]
    assert task.better(0.5, 0.4)
    assert [t.loss for t in task.scratch_terms()] == [rating_mse, preference_bce]


# --- losses -----------------------------------------------------------------------------------


def test_hard_label_losses_by_hand():
    s = scores([[4.0, 1.0, 2.0], [2.0, 9.0, 9.0]], [[0.0, 0.0, 0.0], [math.log(3), 0.0, 0.0]])
    target = torch.tensor([[5.0, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    # rated items only: (4-5)² and (2-3)²
    assert rating_mse(s, target).item() == pytest.approx(1.0)
    # σ(ln 3) = 3/4 for the second rated item; every other logit is 0 (σ = 1/2)
    expected = (5 * math.log(2) + -math.log(0.75)) / 6
    assert preference_bce(s, target).item() == pytest.approx(expected)


def test_rating_distillation_by_hand():
    s = scores([[3.0, 1.0]], [[0.0, 0.0]])
    t = scores([[4.0, 3.0]], [[5.0, -5.0]])
    assert rating_distillation(s, t).item() == pytest.approx((1 + 4) / 2)  # over every candidate


def test_listwise_kd_by_hand():
    s = scores([[1.0, 1.0]], [[0.0, 0.0]])
    t = scores([[1.0, 1.0]], [[0.0, math.log(3)]])  # teacher list probabilities 1/4, 3/4
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert listwise_kd(s, t, temperature=1.0).item() == pytest.approx(expected)
    # T² scaling: at T = 2 the teacher's logits halve
    t2 = scores([[1.0, 1.0]], [[0.0, 2 * math.log(3)]])
    assert listwise_kd(s, t2, temperature=2.0).item() == pytest.approx(4 * expected)


def test_ranking_distillation_by_hand():
    target = torch.tensor([[5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    teacher = scores(
        [[0.0] * 4], [[9.0, 1.0, 3.0, 2.0]]
    )  # unlabelled order: item 2, item 3, item 1
    student = scores([[0.0] * 4], [[7.0, -4.0, 0.0, math.log(3)]])
    w1, w2 = math.exp(-1), math.exp(-2)
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
    expected = -(w1 * math.log(0.5) + w2 * math.log(0.75))  # σ(0) = 1/2, σ(ln 3) = 3/4
    assert ranking_distillation(
        student, teacher, target, top_k=2, sharpness=1.0
    ).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="top_k=4"):
        ranking_distillation(student, teacher, target, top_k=4)


def test_distillation_terms_vanish_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    s = torch.randn(4, 5, 2)
    assert rating_distillation(s, s.clone()).item() == 0.0
    assert listwise_kd(s, s.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    shifted = s.clone()
    shifted[..., 1] += torch.randn(4, 1)  # a per-user constant does not change the order
    assert listwise_kd(s, shifted).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["rating_distillation", "listwise_kd", "ranking_distillation"])
def test_gradient_reaches_the_student_never_the_teacher(name):
    torch.manual_seed(0)
    student = torch.randn(3, 6, 2, requires_grad=True)
    teacher = torch.randn(3, 6, 2, requires_grad=True)
    target = torch.zeros(3, 6)
    target[:, 0] = 4.0
    term = Term(name, name)
    assert term.takes_teacher and LOSSES[name] is term.loss
    term(student, teacher, target).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --- data -------------------------------------------------------------------------------------


def test_movielens_leave_one_out_by_time(movielens):
    table = raw_table()
    users, items = np.unique(table[:, 0]), np.unique(table[:, 1])
    assert movielens.input_shape == (943, 1682) and movielens.task == "rating"
    assert (len(movielens.val), len(movielens.test)) == (943, 943)
    assert len(movielens.train) == 100_000 - 2 * 943
    time_of = {(u, i): ts for u, i, _, ts in table}
    for sample_index in (0, 100, 942):
        test, val = movielens.test[sample_index], movielens.val[sample_index]
        user = users[int(test["input"]["user"])]
        assert users[int(val["input"]["user"])] == user
        test_item, val_item = (
            items[int(test["input"]["items"][0])],
            items[int(val["input"]["items"][0])],
        )
        user_times = table[table[:, 0] == user, 3]
        assert time_of[(user, test_item)] == user_times.max()
        assert time_of[(user, val_item)] <= time_of[(user, test_item)]
        rating = table[(table[:, 0] == user) & (table[:, 1] == test_item), 2][0]
        assert test["target"][0] == rating and (test["target"][1:] == 0).all()
    # held-out interactions are not in the training set
    train_pairs = set(zip(movielens.train.users.tolist(), movielens.train.items.tolist()))
    test_pairs = {
        (int(s["input"]["user"]), int(s["input"]["items"][0]))
        for s in (movielens.test[i] for i in range(943))
    }
    assert not (train_pairs & test_pairs)


def test_evaluation_negatives_are_99_distinct_unrated_and_fixed(movielens):
    table = raw_table()
    users, items = np.unique(table[:, 0]), np.unique(table[:, 1])
    rated = set(
        zip(
            np.searchsorted(users, table[:, 0]).tolist(),
            np.searchsorted(items, table[:, 1]).tolist(),
        )
    )
    for i in range(0, 943, 47):
        sample = movielens.test[i]
        user, candidates = int(sample["input"]["user"]), sample["input"]["items"]
        negatives = candidates[1:].tolist()
        assert len(candidates) == 100 and len(set(negatives)) == 99
        assert not any((user, item) in rated for item in negatives)
        assert int(candidates[0]) not in negatives
    again = load_dataset("movielens")
    assert torch.equal(again.test.candidates, movielens.test.candidates)


def test_training_negatives_are_unrated_and_redrawn_each_epoch(movielens):
    train = movielens.train
    rated = set(zip(train.users.tolist(), train.items.tolist()))
    first = train[5]
    assert first["target"].tolist() == [train.ratings[5].item(), 0, 0, 0, 0]
    user = int(first["input"]["user"])
    assert not any((user, int(item)) in rated for item in first["input"]["items"][1:])
    epoch0 = train.sampled.clone()
    train.set_epoch(1)
    assert not torch.equal(epoch0, train.sampled)
    train.set_epoch(0)
    assert torch.equal(epoch0, train.sampled)


def test_sample_unrated_avoids_rated_items():
    rng = np.random.default_rng(0)
    rated = np.array([0 * 5 + 0, 0 * 5 + 1, 0 * 5 + 2])  # user 0 rated items 0, 1, 2 of 5
    drawn = sample_unrated(np.zeros(50, dtype=np.int64), rated, 5, 2, rng)
    assert set(drawn.flatten().tolist()) <= {3, 4}
    assert all(row[0] != row[1] for row in drawn)


def test_missing_recbole_names_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_dataset("movielens")
    with pytest.raises(DataError, match="not found"):
        load_dataset("movielens", path=str(tmp_path / "none.inter"))


# --- models and the recipe --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["neumf", "neumf_large", "neumf_small"])
def test_neumf_scores_each_candidate_twice(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, input_shape=(30, 40))
    user, items = torch.tensor([0, 29, 3]), torch.randint(0, 40, (3, 7))
    out = model(user=user, items=items)
    assert out.shape == (3, 7, 2)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_head(model.forward_features(user, items)), model(user=user, items=items)
        )
    assert model.forward_features(user, items).shape == (3, 7, model.num_features)


def test_recipe_student_has_at_least_8x_fewer_parameters():
    config = yaml.safe_load((ROOT / "configs" / "movielens.yaml").read_text())

    def params(section):
        model = create_model(
            config[section]["model"],
            num_classes=2,
            input_shape=(943, 1682),
            **config[section].get("kwargs", {}),
        )
        return sum(p.numel() for p in model.parameters())

    assert params("teacher") >= 8 * params("student")


@pytest.mark.integration
def test_movielens_recipe_end_to_end(tmp_path):
    code = main(
        [
            "run",
            str(ROOT / "configs" / "movielens.yaml"),
            "data.subset=100",
            "teacher.epochs=1",
            "train.epochs=1",
            "output.plots=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "movielens_kd" / "summary.json").read_text())
    assert summary["task"]["metrics"] == ["hr@10", "ndcg@10", "rmse"]
    assert summary["data"]["users"] == 100 and summary["data"]["split"]["eval_negatives"] == 99
    for role in ("teacher", "scratch", "student"):
        entry = summary[role]
        assert 0.0 <= entry["hr@10"] <= 1.0 and 0.0 <= entry["ndcg@10"] <= entry["hr@10"]
        assert entry["rmse"] > 0 and entry["latency_ms"]["batch_1"] > 0  # latency on a dict input
    records = [
        json.loads(line)
        for line in (tmp_path / "movielens_kd" / "metrics.jsonl").read_text().splitlines()
    ]
    student = next(r for r in records if r["phase"] == "student")
    assert {"loss/rating", "loss/preference", "loss/rating_kd", "loss/rank_kd", "val/hr@10"} <= set(
        student
    )


@pytest.mark.integration
def test_teacher_cache_keeps_one_view_per_epoch_of_redrawn_negatives(tmp_path):
    # The negatives change every epoch, so one cached view would pair epoch 2's candidates with
    # the teacher's scores of epoch 1's: the cache must hold a view per epoch, each different.
    code = main(
        [
            "run",
            str(ROOT / "configs" / "movielens.yaml"),
            "data.subset=50",
            "teacher.epochs=1",
            "train.epochs=2",
            "teacher.cache=true",
            "teacher.cache_dtype=float32",
            "output.plots=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
        ]
    )
    assert code == 0
    (root,) = (tmp_path / ".cache").iterdir()
    cache = TeacherCache(root)
    assert cache.views == 2
    epoch1 = cache.lookup(torch.arange(10), view=0).logits
    epoch2 = cache.lookup(torch.arange(10), view=1).logits
    assert torch.equal(epoch1[:, 0], epoch2[:, 0])  # the rated item is the same in both epochs
    assert not torch.equal(epoch1[:, 1:], epoch2[:, 1:])  # its sampled negatives are not
