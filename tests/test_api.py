"""`kdistill.distill`: the one-call path on real data (sklearn digits)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdistill
import kdistill.training.loop as loop_module
from kdistill import Distiller, api, create_model, distill, evaluate, fit
from kdistill.data import load_dataset
from kdistill.errors import ArgumentError
from kdistill.methods import scratch
from kdistill.training.acceleration import make_accelerator
from kdistill.training.settings import TrainConfig


def test_distill_one_call_trains_student_and_keeps_teacher():
    splits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", width=128, input_shape=(1, 8, 8))
    loader = DataLoader(
        splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    fit(
        Distiller(teacher, scratch()),
        loader,
        epochs=5,
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    student = create_model("mlp", width=16, input_shape=(1, 8, 8))
    # plain tensors and a dataset of (x, y) pairs both work
    x, y = splits.train.inputs, splits.train.targets
    val = TensorDataset(splits.val.inputs, splits.val.targets)
    result = distill(
        teacher, student, (x, y), val, temperature=4.0, alpha=0.9, epochs=8, lr=3e-3, progress=False
    )

    assert result.student is student
    assert len(result.history) == 8 and {"loss/ce", "loss/kd"} <= set(result.history[0])
    assert 0.8 < result.metrics["val/accuracy"] <= 1.0  # the student learned digits
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    test = evaluate(student, DataLoader(splits.test, batch_size=256))
    assert test["accuracy"] > 0.8


def test_public_api_is_explicit():
    for name in kdistill.__all__:
        assert hasattr(kdistill, name), name
    assert {
        "distill",
        "Distiller",
        "fit",
        "evaluate",
        "FeatureTap",
        "create_model",
        "list_models",
        "load_config",
    } <= set(kdistill.__all__)
    # Three groups (issue 28.3): the one call, what a run is composed of, models/data/weights.
    assert kdistill.__all__ == [*kdistill.ONE_CALL, *kdistill.COMPOSE, *kdistill.MODELS_DATA_IO]
    assert kdistill.TrainConfig is kdistill.training.settings.TrainConfig
    # The mutable registry of methods left the top level; old code still gets it, warned.
    assert "PRESETS" not in kdistill.__all__
    with pytest.warns(DeprecationWarning, match="import it from kdistill.methods"):
        assert kdistill.PRESETS is kdistill.methods.PRESETS


def digits_pair(epochs: int = 3):
    splits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", width=64, input_shape=(1, 8, 8))
    loader = DataLoader(
        splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    fit(
        Distiller(teacher, scratch()),
        loader,
        epochs=epochs,
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    return splits, teacher, create_model("mlp", width=16, input_shape=(1, 8, 8))


def test_baseline_is_the_same_student_on_the_same_budget_without_the_teacher():
    splits, teacher, student = digits_pair()
    train = (splits.train.inputs, splits.train.targets)
    val = (splits.val.inputs, splits.val.targets)
    # alpha=0 leaves only the label term: the distilled student then is the scratch student,
    # bit for bit, only if both start from the same weights and see the same batches and steps.
    result = distill(
        teacher, student, train, val, alpha=0.0, epochs=2, lr=3e-3, progress=False, baseline=True
    )
    assert result.baseline is not student and len(result.baseline_history) == 2
    assert "loss/kd" not in result.baseline_history[0]
    scratch_state = result.baseline.state_dict()
    assert all(torch.equal(v, scratch_state[k]) for k, v in student.state_dict().items())
    assert result.comparison["difference"] == 0 and result.comparison["ci"] == [0.0, 0.0]
    assert result.comparison["mcnemar_p"] == 1.0
    assert result.baseline_metrics["val/accuracy"] == result.metrics["val/accuracy"] > 0.5
    assert result.verdict.startswith(
        "No significant difference between the distilled and the scratch student"
    )
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
    teacher, student = (
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for _ in range(2)
    )
    result = distill(
        teacher, student, (x, y), (x, y), epochs=1, lr=1e-3, progress=False, baseline=True
    )
    assert result.metrics["val/accuracy"] == pytest.approx(1 / 3)
    assert result.baseline_metrics["val/accuracy"] == pytest.approx(1 / 3)
    assert result.verdict.startswith(
        "Neither student learned (distilled 33.3%, scratch 33.3%; chance is 33.3%"
    )
    assert "lr=0.001, epochs=1" in result.verdict and "not distillation" in result.verdict


def test_baseline_needs_validation_data():
    splits, teacher, student = digits_pair(epochs=1)
    with pytest.raises(ArgumentError, match="baseline=True compares the students on val_data"):
        distill(
            teacher,
            student,
            (splits.train.inputs, splits.train.targets),
            baseline=True,
            progress=False,
        )


# --- distill(train=...): the recipe's TrainConfig, field by field (issue 28.1) -----------------

# Each field that works from Python: a value other than its default, where the call put it (what
# the training loop, the accelerator or the seed received) and what must be found there.
REACHED = {
    "epochs": (2, lambda got: got["epochs"], 2),
    "batch_size": (8, lambda got: got["loader"].batch_size, 8),
    "eval_batch_size": (16, lambda got: got["val_loader"].batch_size, 16),
    "lr": (0.01, lambda got: got["lr"], 0.01),
    "optimizer": ("sgd", lambda got: got["optim"].optimizer, "sgd"),
    "momentum": (0.5, lambda got: got["optim"].momentum, 0.5),
    "weight_decay": (0.1, lambda got: got["optim"].weight_decay, 0.1),
    "schedule": ("step", lambda got: got["optim"].schedule, "step"),
    "seed": (7, lambda got: got["seed"], 7),
    "device": ("cpu", lambda got: got["made"][0][0], "cpu"),
    "mixed_precision": ("bf16", lambda got: got["made"][0][1], "bf16"),
    "deterministic": (True, lambda got: got["made"][1]["deterministic"], True),
    "compile": ("aot_eager", lambda got: got["made"][1]["compile"], "aot_eager"),
    "strategy": ("fsdp", lambda got: got["made"][1]["strategy"], "fsdp"),
    "grad_accum": (2, lambda got: got["optim"].grad_accum, 2),
    "clip_grad_norm": (1.0, lambda got: got["optim"].clip_grad_norm, 1.0),
    "warmup_steps": (3, lambda got: got["optim"].warmup_steps, 3),
    "warmup_ratio": (0.1, lambda got: got["optim"].warmup_ratio, 0.1),
    "early_stopping": (
        {"patience": 2, "min_delta": 0.01},
        lambda got: (got["loop"].early_stopping.patience, got["loop"].early_stopping.min_delta),
        (2, 0.01),
    ),
    "keep": ("best", lambda got: got["loop"].keep, "best"),
}
# The fields of a run directory or a recipe's dataset: refused from Python, naming the field.
REFUSED = {
    "seeds": 2,
    "augment": "shift",
    "mix": "mixup",
    "mix_alpha": 0.5,
    "scratch_mix": "none",
    "views": 2,
    "checkpoint_every": 5,
    "time_budget": 60,
}


@pytest.fixture
def reached(monkeypatch):
    """What distill() hands the training loop, the accelerator and the seed; nothing trains."""
    got = {}

    def loop(distiller, loader, **options):
        got.update(options, loader=loader)
        return []

    def accelerator(*args, **options):
        got["made"] = (args, options)
        return make_accelerator("cpu")

    monkeypatch.setattr(api, "train_loop", loop)
    monkeypatch.setattr(api, "make_accelerator", accelerator)
    monkeypatch.setattr(api, "set_seed", lambda seed: got.setdefault("seed", seed))
    return got


def tiny():
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    return nn.Linear(4, 2), nn.Linear(4, 2), (x, y)


def test_every_train_field_is_reached_or_refused():
    assert set(REACHED) | set(REFUSED) == set(TrainConfig.model_fields)


@pytest.mark.parametrize("name", sorted(REACHED))
def test_a_train_field_reaches_the_loop(reached, name):
    value, read, expected = REACHED[name]
    teacher, student, data = tiny()
    distill(teacher, student, data, data, train={name: value}, progress=False)
    assert read(reached) == expected


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_recipe_only_train_field_is_refused_in_one_line(reached, name):
    teacher, student, data = tiny()
    with pytest.raises(ArgumentError, match=rf"^train\.{name}=.* is for recipes only: [^\n]+$"):
        distill(teacher, student, data, data, train={name: REFUSED[name]}, progress=False)
    assert "epochs" not in reached  # refused before anything trains


def test_old_keywords_are_shorthand_for_train_fields_with_the_recipe_defaults(reached):
    teacher, student, data = tiny()
    distill(
        teacher,
        student,
        data,
        epochs=3,
        lr=0.01,
        optimizer="sgd",
        batch_size=8,
        seed=5,
        progress=False,
    )
    short = dict(reached)
    reached.clear()
    distill(
        teacher,
        student,
        data,
        train=TrainConfig(epochs=3, lr=0.01, optimizer="sgd", batch_size=8, seed=5),
        progress=False,
    )
    for key in ("epochs", "lr", "optim", "loop", "seed", "made"):
        assert reached[key] == short[key], key
    reached.clear()
    distill(teacher, student, data, progress=False)
    assert (reached["epochs"], reached["lr"]) == (30, 3e-3)  # TrainConfig's, as a recipe's
    with pytest.raises(ArgumentError, match=r"^train\.epochs: given as epochs= and in train="):
        distill(teacher, student, data, epochs=3, train={"epochs": 4}, progress=False)
    with pytest.raises(ArgumentError, match=r"^train\.keep: a training setting; give it as train="):
        distill(teacher, student, data, keep="best", progress=False)
    with pytest.raises(ArgumentError, match=r"^temprature=: not a setting of method 'kd' \(did"):
        distill(teacher, student, data, temprature=2.0, progress=False)


@pytest.mark.parametrize(
    "train, says",
    [
        ({"lr": -1}, r"^distill\(\): train\.lr: Input should be greater than 0 \(got -1\)$"),
        ({"epoch": 3}, r"unknown key 'train\.epoch' \(did you mean 'train\.epochs'\?\)"),
        ({"early_stopping": {"patience": 0}}, r"train\.early_stopping\.patience"),
    ],
)
def test_a_bad_train_value_names_its_field(reached, train, says):
    teacher, student, data = tiny()
    with pytest.raises(ArgumentError, match=says):
        distill(teacher, student, data, train=train, progress=False)


def test_fit_means_one_thing():
    """``kdistill.fit`` trains what a PyTorch user holds; the loop under it is ``train_loop``."""
    assert kdistill.fit is api.fit
    assert not hasattr(loop_module, "fit") and callable(loop_module.train_loop)


# --- DistillResult.metrics: the task's own evaluation, as a recipe's summary holds it -------------


def test_a_classifiers_metrics_are_its_accuracy_and_loss():
    x, y = torch.randn(60, 1, 4, 4), torch.arange(60) % 3
    torch.manual_seed(0)
    teacher, student = (nn.Sequential(nn.Flatten(), nn.Linear(16, 3)) for _ in range(2))
    result = distill(teacher, student, (x, y), (x, y), epochs=1, progress=False)
    scored = evaluate(student, api.as_loader((x, y), batch_size=60))
    assert result.metrics == pytest.approx(
        {"val/accuracy": scored["accuracy"], "val/loss": scored["loss"]}
    )


def test_a_language_models_metrics_are_its_perplexity_loss_and_token_accuracy():
    vocabulary, length = 13, 8
    torch.manual_seed(0)
    teacher, student = (
        create_model(
            "gpt", num_classes=vocabulary, input_shape=(length,), n_layer=1, n_head=2, n_embd=16
        )
        for _ in range(2)
    )
    x = torch.randint(vocabulary, (24, length))
    terms = [
        kdistill.Term("ce", "token_ce", weight=1.0, teacher=None),
        kdistill.Term("kl", "forward_kl", weight=1.0),
    ]
    result = distill(
        teacher,
        student,
        (x, x.roll(-1, 1)),
        (x, x.roll(-1, 1)),
        terms=terms,
        epochs=1,
        batch_size=8,
        progress=False,
    )
    assert set(result.metrics) == {"val/perplexity", "val/loss", "val/token_accuracy"}
    assert result.metrics["val/perplexity"] == pytest.approx(np.exp(result.metrics["val/loss"]))
    assert [r["val/perplexity"] for r in result.history] == [result.metrics["val/perplexity"]]


class CandidateLists(torch.utils.data.Dataset):
    """A user and 20 candidate items each, with a rating per candidate: a recommender's data."""

    def __init__(self, count: int, users: int = 12, items: int = 30):
        generator = torch.Generator().manual_seed(count)
        self.users = torch.randint(users, (count,), generator=generator)
        self.items = torch.randint(items, (count, 20), generator=generator)
        self.ratings = 5 * torch.rand(count, 20, generator=generator)

    def __len__(self):
        return len(self.users)

    def __getitem__(self, i):
        return {"input": {"user": self.users[i], "items": self.items[i]}, "target": self.ratings[i]}


def test_a_recommenders_metrics_are_its_ranking_metrics():
    torch.manual_seed(0)
    teacher, student = (
        create_model("neumf_small", num_classes=2, input_shape=(12, 30)) for _ in range(2)
    )
    terms = [
        kdistill.Term("rating", "rating_mse", weight=1.0, teacher=None),
        kdistill.Term("preference", "preference_bce", weight=1.0, teacher=None),
        kdistill.Term("kd", "rating_distillation", weight=1.0),
    ]
    train, val = (DataLoader(CandidateLists(n), batch_size=8) for n in (24, 16))
    result = distill(teacher, student, train, val, terms=terms, epochs=1, progress=False)
    assert set(result.metrics) == {"val/hr@10", "val/ndcg@10", "val/rmse"}
    assert 0 <= result.metrics["val/ndcg@10"] <= result.metrics["val/hr@10"] <= 1


def test_baseline_of_a_language_model_is_refused_before_training():
    torch.manual_seed(0)
    teacher, student = (
        create_model("gpt", num_classes=13, input_shape=(8,), n_layer=1, n_head=2, n_embd=16)
        for _ in range(2)
    )
    x = torch.randint(13, (16, 8))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ArgumentError, match="baseline=True compares classifiers"):
        distill(teacher, student, (x, x), (x, x), baseline=True, epochs=1, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
