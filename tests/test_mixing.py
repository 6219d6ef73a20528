"""Consistent teaching (function matching): teacher and student see the identical augmented,
mixed tensor every step; an epoch's views and mixing replay exactly; the cached teacher serves
the live teacher's targets on the same view; the scratch student learns the mixed labels."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, create_model
from kdistill.data import load_dataset
from kdistill.data.mixing import Mixed, check_mix_terms, cutmix_masks, mix_batch, mix_draws, mixed
from kdistill.errors import ConfigError
from kdistill.methods import hinton_kd, preset_terms, scratch
from kdistill.run.config import load_config
from kdistill.run.plan import train_loader, training_set
from kdistill.teachers.cache import CachedTeacher, build_cache
from kdistill.training.loop import train_loop


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", subset=240)


def recipe(*overrides):
    return load_config(
        None, ["data.dataset=digits", "train.batch_size=32", "train.augment=shift", *overrides]
    )


def epoch_views(dataset, epoch):
    dataset.set_epoch(epoch)
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    return batch["input"], batch["target"]


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_a_replayed_epoch_reproduces_its_views_and_mixing(splits, mix):
    first = training_set(splits, recipe(f"train.mix={mix}", "train.seed=5"), "shift", mix)
    again = training_set(splits, recipe(f"train.mix={mix}", "train.seed=5"), "shift", mix)
    x3, y3 = epoch_views(first, 3)
    epoch_views(
        again, 1
    )  # another epoch drawn first: the replay depends on nothing but (seed, epoch, index)
    x3_again, y3_again = epoch_views(again, 3)
    assert torch.equal(x3, x3_again) and torch.equal(y3, y3_again)
    x4, y4 = epoch_views(first, 4)
    assert not torch.equal(x3, x4) and not torch.equal(y3, y4)  # each epoch its own views and pairs
    other_seed = training_set(splits, recipe(f"train.mix={mix}", "train.seed=6"), "shift", mix)
    assert not torch.equal(epoch_views(other_seed, 3)[0], x3)
    # Targets are label distributions; most samples are really mixed (two classes share them).
    torch.testing.assert_close(y3.sum(1), torch.ones(len(y3)))
    assert ((y3 > 0).sum(1) == 2).float().mean() > 0.5


def test_the_mixing_is_the_documented_replay_of_seed_epoch_and_index(splits):
    """Sample i of epoch e: partner, lambda and box from mix_draws(seed, e), row i; each image in
    its own unmixed augmented view of that epoch (mixing does not disturb the shifts)."""
    plain = training_set(splits, recipe("train.seed=4"), "shift")
    mixed_set = training_set(splits, recipe("train.mix=cutmix", "train.seed=4"), "shift", "cutmix")
    plain.set_epoch(2)
    mixed_set.set_epoch(2)
    draws = mix_draws(len(plain), 1.0, seed=4, epoch=2)
    for i in range(10):
        j = int(draws.partner[i])
        box = cutmix_masks(
            tuple(splits.input_shape[-2:]), draws.lam[i : i + 1], draws.centre[i : i + 1]
        )[0]
        expected = torch.where(box, plain[j]["input"], plain[i]["input"])
        assert torch.equal(mixed_set[i]["input"], expected)
    # one sample fetched alone is the same as in a batch
    batch = mixed_set.__getitems__([5, 0, 9])
    assert torch.equal(batch[0]["input"], mixed_set[5]["input"]) and torch.equal(
        batch[2]["target"], mixed_set[9]["target"]
    )


def test_mixup_and_cutmix_labels_follow_the_pixels():
    a, b = torch.zeros(3, 1, 10, 10), torch.ones(3, 1, 10, 10)
    lam = torch.tensor([0.3, 0.5, 0.9])
    x, share = mix_batch(a, b, "mixup", lam, torch.rand(3, 2))
    assert torch.equal(share, lam) and torch.allclose(x[0], torch.full_like(a[0], 0.7))
    centre = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.95, 0.3]])  # centred, in a corner, at an edge
    x, share = mix_batch(a, b, "cutmix", torch.tensor([0.2, 0.5, 0.8]), centre)
    torch.testing.assert_close(
        share, 1 - x.flatten(1).mean(1)
    )  # the partner's share is the pasted area
    assert share[1] > 0.5  # a box clipped at the corner pastes less than 1 - lambda


class Recorder(nn.Module):
    """A model that keeps every input it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def test_teacher_and_student_receive_the_identical_tensor_every_step(splits):
    torch.manual_seed(0)
    shape = tuple(splits.input_shape)
    teacher = Recorder(create_model("mlp", width=16, input_shape=shape))
    student = Recorder(create_model("mlp", width=8, input_shape=shape))
    distiller = Distiller(student, hinton_kd(alpha=1.0))
    r = recipe("train.mix=mixup")
    loader = train_loader(splits, r, "shift", "mixup")
    train_loop(distiller, loader, teacher=Teacher(teacher), epochs=2, lr=1e-3, progress=False)
    steps = 2 * len(loader)
    assert len(teacher.seen) == len(student.seen) == steps
    for t_input, s_input in zip(teacher.seen, student.seen):
        assert torch.equal(t_input, s_input)
    # ... and it is the augmented, mixed view: not any training image as stored.
    stored = splits.train.inputs if hasattr(splits.train, "inputs") else None
    if stored is not None:
        first = teacher.seen[0][0]
        assert not any(torch.equal(first, image) for image in stored)


def test_cached_and_live_teachers_give_the_same_targets_on_the_same_view(splits, tmp_path):
    teacher = Teacher(create_model("mlp", width=16, input_shape=tuple(splits.input_shape)))
    dataset = training_set(splits, recipe("train.mix=cutmix", "train.seed=2"), "shift", "cutmix")
    cache = build_cache(
        tmp_path / "c", teacher, dataset, fingerprint={"t": 1}, views=3, dtype="float32"
    )
    cached = CachedTeacher(cache)
    loader = DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        cached.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(
                cached(batch).logits, teacher(batch).logits, rtol=1e-5, atol=1e-5
            )


def test_soft_target_cross_entropy_is_the_mixed_labels_loss():
    logits = torch.randn(4, 3)
    a, b, lam = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2]), 0.3
    soft = lam * F.one_hot(a, 3).float() + (1 - lam) * F.one_hot(b, 3).float()
    ce = scratch()[0]
    expected = lam * F.cross_entropy(logits, a) + (1 - lam) * F.cross_entropy(logits, b)
    torch.testing.assert_close(ce(logits, None, soft), expected)


def test_mixing_refuses_what_it_would_break(splits):
    check_mix_terms("mixup", hinton_kd(alpha=0.5), "classification")  # CE on mixed labels is fine
    check_mix_terms("none", preset_terms("dkd"), "classification")
    with pytest.raises(ConfigError, match="term dkd reads one true class"):
        check_mix_terms("mixup", preset_terms("dkd"), "classification")
    with pytest.raises(ConfigError, match="not rating"):
        check_mix_terms("cutmix", scratch(), "rating")
    with pytest.raises(ConfigError, match="classification task"):
        mixed(splits.train, "mixup", alpha=1.0, num_classes=None)
    assert mixed(splits.train, "none", alpha=1.0, num_classes=10) is splits.train
    assert isinstance(mixed(splits.train, "mixup", alpha=1.0, num_classes=10), Mixed)
    with pytest.raises(ConfigError, match="train.mix"):
        load_config(None, ["train.mix=mixpu"])


# The built-in recipe's function matching, undone, so that each test sets the mixing it tests.
QUICK = [
    "data.dataset=digits",
    "data.subset=300",
    "teacher.model=mlp",
    "teacher.kwargs={width: 32}",
    "teacher.epochs=2",
    "teacher.augment=shift",
    "student.kwargs={width: 16}",
    "train.epochs=2",
    "train.augment=shift",
    "train.mix=none",
    "train.scratch_mix=same",
    "train.views=0",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def test_a_run_with_mixing_reads_its_cached_mixed_views_back(tmp_path):
    from kdistill.cli import main

    args = [
        *QUICK,
        "train.mix=mixup",
        "distill.alpha=1",
        "teacher.cache=true",
        f"output.dir={tmp_path}",
    ]
    assert main(["run", *args, "name=first"]) == 0
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["students"] == {
        "epochs": 2,
        "augment": "shift",
        "mix": "mixup",
        "mix_alpha": 1.0,
    }
    assert (
        "Both students train alike: 2 epochs, augmentation shift, mixup"
        in (tmp_path / "first" / "report.md").read_text()
    )
    root = next((tmp_path / ".cache").iterdir())
    assert '"mix": "mixup"' in (root / "meta.json").read_text()
    stamp = (root / "logits.npy").stat().st_mtime_ns
    assert (
        main(["run", *args, "name=second"]) == 0
    )  # opened, probed against the live teacher's mixed view
    assert (root / "logits.npy").stat().st_mtime_ns == stamp
    assert (
        main(["run", *QUICK, "train.mix=mixup", "method=dkd", f"output.dir={tmp_path}", "name=dkd"])
        == 2
    )


def test_students_without_the_teachers_augmentation_are_reported_against_a_weaker_baseline(
    tmp_path,
):
    from kdistill.cli import main

    plain = [a for a in QUICK if a != "train.augment=shift"]
    assert main(["run", *plain, "train.augment=none", f"output.dir={tmp_path}", "name=plain"]) == 0
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["students"] == {
        "epochs": 2,
        "augment": "none",
        "mix": "none",
        "teacher_augment": "shift",
    }
    assert (
        "so this scratch student is not the strongest baseline"
        in (tmp_path / "plain" / "report.md").read_text()
    )


@pytest.mark.parametrize("augment", ["shift", "affine"])
def test_views_repeat_in_turn_and_the_cache_holds_that_many(splits, tmp_path, augment):
    dataset = training_set(
        splits, recipe("train.mix=cutmix", "train.seed=3"), augment, "cutmix", views=2
    )
    first, second, third, fourth = (epoch_views(dataset, e) for e in (1, 2, 3, 4))
    assert not torch.equal(first[0], second[0])
    assert torch.equal(first[0], third[0]) and torch.equal(
        first[1], third[1]
    )  # epoch 3 replays epoch 1
    assert torch.equal(second[0], fourth[0]) and torch.equal(second[1], fourth[1])
    teacher = Teacher(create_model("mlp", width=16, input_shape=tuple(splits.input_shape)))
    cache = build_cache(
        tmp_path / "c", teacher, dataset, fingerprint={"t": 1}, views=2, dtype="float32"
    )
    assert cache.meta["views"] == 2
    cached = CachedTeacher(cache)
    loader = DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for epoch in (3, 4, 5):  # beyond the cached views: the same cycle on both sides
        dataset.set_epoch(epoch)
        cached.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(
                cached(batch).logits, teacher(batch).logits, rtol=1e-5, atol=1e-5
            )


def test_a_run_with_cycled_views_and_the_scratch_students_own_mixing(tmp_path, monkeypatch):
    from kdistill.cli import main
    from kdistill.run import school

    loaders = []
    real_loader = school.train_loader

    def recording_loader(splits, recipe, augment, mix="none", views=0, *rest):
        loaders.append((augment, mix, views))
        return real_loader(splits, recipe, augment, mix, views, *rest)

    monkeypatch.setattr(school, "train_loader", recording_loader)
    args = [
        *QUICK,
        "train.epochs=3",
        "train.mix=cutmix",
        "train.scratch_mix=none",
        "train.views=2",
        "distill.alpha=1",
        "distill.temperature=1",
        "teacher.cache=true",
        f"output.dir={tmp_path}",
        "name=fm",
    ]
    assert main(["run", *args]) == 0
    # The teacher trains unmixed, the scratch student on its own mixing with a new view every
    # epoch, the distilled student on the cycled, mixed views the cache holds.
    assert loaders[-3:] == [("shift", "none", 0), ("shift", "none", 0), ("shift", "cutmix", 2)]
    summary = json.loads((tmp_path / "fm" / "summary.json").read_text())
    assert summary["students"] == {
        "epochs": 3,
        "augment": "shift",
        "mix": "cutmix",
        "mix_alpha": 1.0,
        "scratch_mix": "none",
        "views": 2,
    }
    report = (tmp_path / "fm" / "report.md").read_text()
    assert "the scratch student's get no mixing (train.scratch_mix)" in report
    assert (
        "images are mixed (cutmix, λ ~ Beta(1, 1))" in report
    )  # not "α", which reads as distill.alpha
    assert "The teacher scores 2 distinct views of each image" in report
    meta = json.loads(next((tmp_path / ".cache").iterdir()).joinpath("meta.json").read_text())
    assert meta["views"] == 2 and meta["fingerprint"]["augment"]["views"] == 2
