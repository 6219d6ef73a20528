"""Transfer sets (issue 29, item 1 for recipes, and its bad input): ``data.unlabelled`` inputs
that the teacher scores and only the distilled student learns from, without labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import call_cli
from sklearn.datasets import load_digits
from test_hardening import refused_without_changes

from kdistill import Distiller, ModelOutput, Teacher, Term
from kdistill.data.base import stratified_split
from kdistill.data.images import rest_of, stratified_subset
from kdistill.data.transfer import UNLABELLED
from kdistill.errors import DataError


def test_ce_on_a_batch_with_unlabelled_samples_is_ce_over_the_labelled_ones():
    torch.manual_seed(0)
    logits, teacher = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    target = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 3, 1])
    distiller = Distiller(torch.nn.Identity(), [Term("ce", "ce", teacher=None), Term("kd", "kd")])
    distiller.transfer = True
    batch = {"input": logits, "target": target, "index": torch.arange(6)}
    out = distiller(batch, ModelOutput(teacher))
    labelled = target != UNLABELLED
    torch.testing.assert_close(out["loss/ce"], F.cross_entropy(logits[labelled], target[labelled]))
    # the term that needs no label sees every sample; accumulation counts follow each term
    torch.testing.assert_close(out["loss/kd"], distiller.terms[1](logits, teacher, target))
    assert distiller.counts(batch).tolist() == [4.0, 6.0]
    # a batch of the transfer set alone: CE is 0, still a graph for backward
    alone = {**batch, "target": torch.full((6,), UNLABELLED)}
    out = distiller(alone, ModelOutput(teacher))
    assert out["loss/ce"] == 0 and out["loss/ce"].requires_grad


def test_dkd_needs_the_labels_and_sees_only_the_labelled_samples():
    torch.manual_seed(1)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    target = torch.tensor([UNLABELLED, 1, 2, UNLABELLED, 0])
    term = Term("dkd", "dkd")
    assert term.takes_target
    labelled = target != UNLABELLED
    torch.testing.assert_close(
        term(student, teacher, target, labelled=labelled),
        term(student[labelled], teacher[labelled], target[labelled]),
    )


def test_digits_rest_as_transfer_set_teaches_only_the_distilled_student(
    tmp_path,
    tiny_recipe,
    monkeypatch,
):
    seen = {"teacher": 0, "scratch": 0, "distilled": 0}
    teacher_call, forward = Teacher.__call__, Distiller.forward

    def teacher_spy(self, batch):
        seen["teacher"] += int((batch["target"] == UNLABELLED).sum())
        return teacher_call(self, batch)

    def forward_spy(self, batch, teacher_out=None, shares=None):
        role = "distilled" if self.needs_teacher else "scratch"
        seen[role] += int((batch["target"] == UNLABELLED).sum())
        return forward(self, batch, teacher_out, shares)

    monkeypatch.setattr(Teacher, "__call__", teacher_spy)
    monkeypatch.setattr(Distiller, "forward", forward_spy)
    result = call_cli("run", *tiny_recipe, "data.subset=200", "data.unlabelled=rest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    sizes = summary["data"]["sizes"]
    assert sizes["unlabelled"] == 1797 - 200
    assert sizes["train"] + sizes["val"] + sizes["test"] == 200
    assert summary["data"]["unlabelled"] == "rest"
    # one epoch: the teacher scored each transfer sample once, the distilled student learnt from
    # each, and the scratch student (and the teacher's own training) never saw one
    assert seen == {"teacher": sizes["unlabelled"], "scratch": 0, "distilled": sizes["unlabelled"]}
    assert "unlabelled 1597" in (next(tmp_path.glob("runs/*/report.md")).read_text())


def raw_digits():
    digits = load_digits()
    return digits.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0, digits.target


def test_npz_transfer_set_with_labels_is_read_and_its_labels_ignored(tmp_path, tiny_recipe):
    x, y = raw_digits()
    inputs, labels = rest_of(x, y, 200, 0)
    np.savez(tmp_path / "pool.npz", x=inputs[:150], y=labels[:150])
    overrides = ["data.subset=200", "data.unlabelled=pool.npz"]
    result = call_cli("run", *tiny_recipe, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("they are ignored") == 1
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    assert summary["data"]["sizes"]["unlabelled"] == 150


def write_table(path, rows: np.ndarray, labels: np.ndarray | None = None) -> None:
    header = "a,b,c" + (",label" if labels is not None else "")
    lines = [
        ",".join(f"{v:.3f}" for v in row) + (f",{labels[i]}" if labels is not None else "")
        for i, row in enumerate(rows)
    ]
    path.write_text("\n".join([header, *lines]) + "\n")


def test_table_transfer_set_takes_the_feature_columns_and_refuses_test_rows(tmp_path, tiny_recipe):
    rng = np.random.default_rng(0)
    rows, labels = rng.normal(size=(140, 3)), np.arange(140) % 2
    write_table(tmp_path / "labelled.csv", rows[:100], labels[:100])
    write_table(tmp_path / "pool.csv", rows[100:], labels[100:])  # labels there: ignored
    table = ["data.dataset=table", "data.path=labelled.csv", "data.options={label: label}"]
    recipe = [*tiny_recipe[1:], *table]
    result = call_cli("run", *recipe, "data.unlabelled=pool.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("label column 'label': it is ignored") == 1
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    assert summary["data"]["sizes"]["unlabelled"] == 40
    # a row of the labelled table's test split, in a file without the label column
    from kdistill.data import load_dataset

    splits = load_dataset("table", path=str(tmp_path / "labelled.csv"), label="label")
    normalise = splits.identity["normalise"]
    test_row = splits.test.inputs[0].numpy() * normalise["std"] + np.array(normalise["mean"])
    position = int(np.abs(rows[:100] - test_row).sum(1).argmin())
    write_table(tmp_path / "leak.csv", np.concatenate([rows[100:], rows[position : position + 1]]))
    refused_without_changes(
        tmp_path,
        "run",
        *recipe,
        "output.dir=leak",
        "data.unlabelled=leak.csv",
        fragments=("1 sample(s) are identical to test samples",),
    )
    assert not (tmp_path / "leak").exists()


@pytest.mark.parametrize(
    "setting, arrays, fragments",
    [
        ("data.unlabelled=rest", None, ("data.unlabelled", "transfer set is empty", "data.subset")),
        (
            "data.unlabelled=empty.npz",
            {"x": np.zeros((0, 1, 8, 8), np.float32)},
            ("data.unlabelled", "transfer set is empty", "no samples"),
        ),
        (
            "data.unlabelled=wide.npz",
            {"x": np.zeros((5, 1, 9, 9), np.float32)},
            ("data.unlabelled", "(1, 9, 9)", "(1, 8, 8)"),
        ),
        (
            "data.unlabelled=words.npz",
            {"x": np.array([["a", "b"]])},
            ("data.unlabelled", "not numbers"),
        ),
        (
            "data.unlabelled=leak.npz",
            "test",
            ("data.unlabelled", "3 sample(s) are identical to test samples"),
        ),
        ("data.unlabelled=labels.csv", None, ("data.unlabelled", ".npz")),
        (
            "assistant={model: mlp, kwargs: {width: 16}}",
            None,
            ("data.unlabelled", "for one teacher", "teacher.cache"),
        ),
        ("train.mix=mixup", None, ("data.unlabelled", "no label to mix", "train.mix")),
    ],
)
def test_cli_refuses_a_bad_transfer_set_in_one_line(
    tmp_path,
    tiny_recipe,
    setting,
    arrays,
    fragments,
):
    if arrays == "test":  # three raw digits of the labelled run's test split, as in a user's file
        x, y = stratified_subset(*raw_digits(), 200, 0)
        _, _, test = stratified_split(y, (0.7, 0.1, 0.2), 0)
        arrays = {"x": x[test[:3]]}
    if isinstance(arrays, dict):
        np.savez(tmp_path / setting.split("=")[1], **arrays)
    subset = [] if setting == "data.unlabelled=rest" else ["data.subset=200"]
    transfer = [] if setting.startswith("data.unlabelled") else ["data.unlabelled=rest"]
    cache = ["teacher.cache=true"] if setting.startswith("assistant") else []
    args = ["run", *tiny_recipe, *subset, *transfer, *cache, setting]
    refused_without_changes(tmp_path, *args, fragments=fragments)
    assert not (tmp_path / "runs").exists()


def test_a_memory_bank_method_holds_the_transfer_set_too(tmp_path, tiny_recipe):
    """CRD finds samples by index: its banks must reach past the labelled split."""
    args = [*tiny_recipe, "data.subset=200", "data.unlabelled=rest", "method=crd"]
    result = call_cli("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def noise_images(folder, count: int, seed: int, size: int = 6):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_transfer_set_without_class_folders(tmp_path, tiny_recipe):
    for seed, name in enumerate(("cat", "dog")):
        noise_images(tmp_path / "images" / name, 10, seed)
    noise_images(tmp_path / "pool", 8, seed=2)
    recipe = [*tiny_recipe[1:], "data.dataset=folder", "data.path=images"]
    result = call_cli("run", *recipe, "data.unlabelled=pool", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    assert summary["data"]["sizes"]["unlabelled"] == 8
    noise_images(tmp_path / "odd", 1, seed=3, size=7)
    refused_without_changes(
        tmp_path,
        "run",
        *recipe,
        "data.unlabelled=odd",
        fragments=("data.unlabelled", "7×7 pixels", "6×6"),
    )
    for name in ("cat", "dog"):  # the labelled images again: the test split's among them
        for file in (tmp_path / "images" / name).iterdir():
            (tmp_path / "pool" / f"{name}{file.name}").write_bytes(file.read_bytes())
    refused_without_changes(
        tmp_path,
        "run",
        *recipe,
        "data.unlabelled=pool",
        "output.dir=leak",
        fragments=("identical to test samples",),
    )
    assert not (tmp_path / "leak").exists()


def test_every_student_takes_the_same_steps_and_the_pseudo_label_row_is_reported(
    tmp_path, tiny_recipe, monkeypatch
):
    """Issue 29.2: the scratch student goes over its labelled samples as many steps as the
    distilled student takes over both sets; the pseudo-label student (self-training) learns
    from the teacher's hard labels of the transfer set, for those steps too."""
    seen, teacher_labels = {}, {}
    forward, teacher_call = Distiller.forward, Teacher.__call__

    def teacher_spy(self, batch):
        out = teacher_call(self, batch)
        for i, label in zip(batch["index"].tolist(), out.logits.argmax(-1).tolist()):
            teacher_labels.setdefault(i, label)  # the labelling pass, then the distilled student
        return out

    def forward_spy(self, batch, teacher_out=None, shares=None):
        if self.needs_teacher:
            role = "distilled"
        else:  # the teacher's own training and the scratch student's: the 140 labelled alone
            role = "pseudo" if int(batch["index"].max()) >= 140 else "labelled"
        for i, target in zip(batch["index"].tolist(), batch["target"].tolist()):
            seen.setdefault(role, {})[i] = target
        return forward(self, batch, teacher_out, shares)

    monkeypatch.setattr(Teacher, "__call__", teacher_spy)
    monkeypatch.setattr(Distiller, "forward", forward_spy)
    overrides = ["data.subset=200", "data.unlabelled=rest", "data.pseudo_labels=true"]
    result = call_cli("run", *tiny_recipe, *overrides, "train.batch_size=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = next(tmp_path.glob("runs/*/summary.json")).parent
    summary = json.loads((run / "summary.json").read_text())
    labelled, pool = summary["data"]["sizes"]["train"], summary["data"]["sizes"]["unlabelled"]
    assert (labelled, pool) == (140, 1597)
    steps = -(-(labelled + pool) // 64)  # 28
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    drawn = {r["phase"]: r["samples"] for r in records if "samples" in r}
    assert drawn == {"teacher": 140, "scratch": 1737, "pseudo_labels": 1737, "student": 1737}
    assert summary["students"]["budget"] == {
        "samples_per_epoch": 1737,
        "steps_per_epoch": steps,
        "labelled_share": None,
        "pseudo_labels": True,
    }
    assert set(seen["labelled"]) == set(range(labelled))
    pseudo = {i: t for i, t in seen["pseudo"].items() if i >= labelled}
    assert len(pseudo) == pool and all(pseudo[i] == teacher_labels[i] for i in pseudo)
    assert {t for i, t in seen["distilled"].items() if i >= labelled} == {UNLABELLED}
    assert "accuracy" in summary["pseudo_labels"]
    assert "student_vs_pseudo_labels" in summary["comparisons"]
    report = next(tmp_path.glob("runs/*/report.md")).read_text()
    assert "distilled − pseudo-labels" in report and "self-training" in report
    assert f"same {steps:,} optimizer steps per epoch" in report


def test_labelled_share_sets_each_epochs_mix_in_a_recipe(tmp_path, tiny_recipe, monkeypatch):
    labelled_seen = []
    forward = Distiller.forward

    def forward_spy(self, batch, teacher_out=None, shares=None):
        if self.needs_teacher and self.training:
            labelled_seen.append(int((batch["target"] != UNLABELLED).sum()))
        return forward(self, batch, teacher_out, shares)

    monkeypatch.setattr(Distiller, "forward", forward_spy)
    overrides = ["data.subset=200", "data.unlabelled=rest", "data.labelled_share=0.5"]
    result = call_cli("run", *tiny_recipe, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sum(labelled_seen[1:]) == round(0.5 * 1737)  # after preflight's batch
    refused_without_changes(
        tmp_path,
        "run",
        *tiny_recipe,
        "data.pseudo_labels=true",
        "output.dir=none",
        fragments=("pseudo_labels", "data.unlabelled"),
    )


def test_the_teacher_cache_covers_the_transfer_set_and_serves_every_seed(
    tmp_path, tiny_recipe, monkeypatch
):
    import kdistill.run.school as school

    builds = []
    open_or_build = school.open_or_build

    def spy(root, teacher, dataset, **options):
        cache, built = open_or_build(root, teacher, dataset, **options)
        builds.append((len(dataset), built))
        return cache, built

    monkeypatch.setattr(school, "open_or_build", spy)
    cached = [*tiny_recipe, "data.subset=200", "data.unlabelled=rest", "teacher.cache=true"]
    cached.append("train.augment=none")  # fixed inputs: the seed draws no views
    result = call_cli("run", *cached, "output.dir=s0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert builds == [(140 + 1597, True)]  # the labelled split and the transfer set
    teacher = next(tmp_path.glob("s0/*/checkpoints/teacher.safetensors"))
    again = [*cached, "train.seed=2", f"teacher.checkpoint={teacher}", "output.dir=s0"]
    result = call_cli("run", *again, "name=seed2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert builds[1:] == [(1737, False)]  # the same teacher: seed 0's cache serves seed 2
    summary = json.loads(next(tmp_path.glob("s0/seed2/summary.json")).read_text())
    assert summary["data"]["sizes"]["unlabelled"] == 1597


def test_rotten_tomatoes_labelled_keeps_the_test_split_and_rest_is_the_transfer_set():
    from kdistill.data import load_dataset

    split = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}
    full = load_dataset("rotten_tomatoes", **split)
    scarce = load_dataset("rotten_tomatoes", **split, labelled=1000, rest=True)
    assert (len(scarce.train), len(scarce.unlabelled)) == (1000, len(full.train) - 1000)
    for name in ("val", "test"):  # the same snippets scored, whatever the number of labels
        assert torch.equal(getattr(full, name).input_ids, getattr(scarce, name).input_ids)
    assert set(scarce.unlabelled.targets.tolist()) == {UNLABELLED}  # their labels are not kept
    rows = {tuple(row) for row in full.train.input_ids.tolist()}
    kept = scarce.train.input_ids.tolist() + scarce.unlabelled.input_ids.tolist()
    assert {tuple(row) for row in kept} == rows  # the training split, cut in two
    fresh = [float(d.targets.float().mean()) for d in (full.train, scarce.train)]
    assert fresh[1] == pytest.approx(fresh[0], abs=0.01)  # a stratified draw
    with pytest.raises(DataError, match="data.options.labelled"):
        load_dataset("rotten_tomatoes", **split, labelled=len(full.train) + 1)


def digests(inputs: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in inputs}


@pytest.mark.parametrize("transfer", [True, False])
def test_teacher_data_rest_teaches_the_teacher_more_labels_than_the_students_have(transfer):
    """``teacher.data: rest`` (the built-in recipe's scenario): the teacher trains on the labelled
    split and the rest with its labels; with ``data.unlabelled: rest`` too, the rest is cut in
    two disjoint halves, and the transfer set is inputs the teacher never trained on. No half
    holds a test or validation digit."""
    from kdistill.run.config import load_config
    from kdistill.run.plan import load_data

    unlabelled = ["data.unlabelled=rest"] if transfer else []
    recipe = load_config(
        None, ["data.dataset=digits", "data.subset=300", "teacher.data=rest", *unlabelled]
    )
    splits = load_data(recipe)
    rest = 1797 - 300
    taught = splits.teacher_train
    extra = taught.inputs[len(splits.train) :]
    assert torch.equal(taught.inputs[: len(splits.train)], splits.train.inputs)
    assert len(extra) == (rest // 2 if transfer else rest) and (taught.targets >= 0).all()
    # the rest's labels are the true ones: the teacher's extra digits keep every class
    assert set(taught.targets[len(splits.train) :].tolist()) == set(range(10))
    held_out = digests(splits.test.inputs) | digests(splits.val.inputs)
    assert not digests(extra) & held_out
    if transfer:
        assert len(splits.unlabelled) == rest - rest // 2
        assert not digests(splits.unlabelled) & (digests(extra) | held_out)
    else:
        assert splits.unlabelled is None
    assert splits.identity["teacher_data"] == {"rest": len(extra), "halves": transfer}
    assert splits.rest_targets is None  # the rest's labels go no further than the teacher


def test_teacher_data_changes_the_teachers_fingerprint():
    """A teacher trained without the rest is never reused for a recipe that asks for it."""
    from kdistill.run.config import load_config
    from kdistill.run.plan import load_data
    from kdistill.run.school import teacher_fingerprint

    prints = set()
    for extra in ([], ["teacher.data=rest"]):
        recipe = load_config(None, ["data.dataset=digits", "data.subset=300", *extra])
        prints.add(teacher_fingerprint(recipe, load_data(recipe)))
    assert len(prints) == 2


def test_teacher_data_rest_trains_the_teacher_on_it_and_the_report_says_so(
    tmp_path, tiny_recipe, monkeypatch
):
    from kdistill.run import school

    sizes = {}
    train = school.RunSchool._train

    def spy(self, phase, *args, splits=None, **kwargs):
        sizes[phase] = len((splits or self.splits).train)
        return train(self, phase, *args, splits=splits, **kwargs)

    monkeypatch.setattr(school.RunSchool, "_train", spy)
    overrides = ["data.subset=300", "data.unlabelled=rest", "teacher.data=rest"]
    result = call_cli("run", *tiny_recipe, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    train = summary["data"]["sizes"]["train"]
    assert sizes == {"teacher": train + (1797 - 300) // 2, "scratch": train, "student": train}
    report = next(tmp_path.glob("runs/*/report.md")).read_text()
    assert f"also learnt from {(1797 - 300) // 2:,} labelled samples no student sees" in report


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["data.dataset=table", "data.path=t.csv", "teacher.data=rest"],
            "teacher.data: 'rest' is for",
        ),
        (["teacher.data=rest"], "teacher.data: no samples are left outside data.subset"),
        (["data.subset=300", "teacher.data=all"], "teacher.data"),
    ],
)
def test_teacher_data_is_refused_in_one_line_where_it_cannot_be(
    tmp_path, tiny_recipe, overrides, fragment
):
    write_table(tmp_path / "t.csv", np.random.default_rng(0).random((60, 3)), np.arange(60) % 2)
    refused_without_changes(tmp_path, "run", *tiny_recipe, *overrides, fragments=[fragment])


def test_check_states_the_transfer_set_and_the_teachers_extra_labels(tmp_path, tiny_recipe):
    overrides = ["data.subset=300", "data.unlabelled=rest", "teacher.data=rest"]
    result = call_cli("check", *tiny_recipe, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train/val/test + 749 unlabelled; the teacher 748 labelled more;" in result.stdout


def test_training_accuracy_counts_the_labelled_samples_only():
    """A transfer set's samples have no label to be right about: the distilled student's
    train/accuracy is over the labelled samples of the epoch, not diluted by the unlabelled."""
    from kdistill.training.selection import TrainingProgress

    progress = TrainingProgress()
    logits = F.one_hot(torch.tensor([1, 0, 0, 3]), 4).float()
    batch = {"target": torch.tensor([1, UNLABELLED, 2, UNLABELLED])}
    progress.add({"logits": logits, "loss": torch.tensor(0.5)}, batch)
    assert progress.epoch_means()["train/accuracy"] == 0.5  # 1 right of 2 labelled, of 4 seen
    meta, tensors = progress.to_saved()
    resumed = TrainingProgress.from_saved(meta, tensors)
    assert resumed.epoch_means()["train/accuracy"] == 0.5
    # A state saved before the labelled count was kept: every sample it saw was labelled.
    older = TrainingProgress.from_saved(meta, {**tensors, "correct": torch.tensor(3)})
    assert older.epoch_means()["train/accuracy"] == 0.75


def test_a_memory_mapped_npy_pool_streams_and_trains_as_the_same_npz(tmp_path, tiny_recipe):
    """``data.unlabelled: pool.npy`` is read from disk as batches need it (a pool larger than
    memory is never copied whole), and trains exactly as the same inputs given as an .npz."""
    from kdistill.data.pool import MappedPool
    from kdistill.run.config import load_config
    from kdistill.run.plan import load_data

    x, y = raw_digits()
    inputs, _ = rest_of(x, y, 200, 0)
    np.savez(tmp_path / "pool.npz", x=inputs[:300])
    np.save(tmp_path / "pool.npy", inputs[:300])
    recipe = load_config(None, [*tiny_recipe, "data.subset=200", "data.unlabelled=pool.npy"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        pool = load_data(recipe).unlabelled
    assert isinstance(pool, MappedPool) and isinstance(pool.array, np.memmap)
    losses = {}
    for kind in ("npz", "npy"):
        overrides = ["data.subset=200", f"data.unlabelled=pool.{kind}", f"name={kind}"]
        result = call_cli("run", *tiny_recipe, *overrides, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        run = tmp_path / "runs" / kind
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[kind] = [r["loss"] for r in records if r["phase"] == "student"]
        assert json.loads((run / "summary.json").read_text())["data"]["sizes"]["unlabelled"] == 300
    assert losses["npy"] == pytest.approx(losses["npz"], rel=1e-6)


@pytest.mark.parametrize(
    "array, fragment",
    [
        ("test", "identical to test samples"),
        (np.array(["a", "b"]), "not numbers"),
        (np.zeros(5, dtype=np.float32), "give one row per sample"),
        (None, "not found"),
    ],
)
def test_a_bad_npy_pool_is_refused_in_one_line(tmp_path, tiny_recipe, array, fragment):
    if isinstance(array, str):  # three raw digits of the labelled run's test split
        x, y = stratified_subset(*raw_digits(), 200, 0)
        _, _, test = stratified_split(y, (0.7, 0.1, 0.2), 0)
        array = x[test[:3]]
    if array is not None:
        np.save(tmp_path / "pool.npy", array)
    overrides = ["data.subset=200", "data.unlabelled=pool.npy"]
    refused_without_changes(tmp_path, "run", *tiny_recipe, *overrides, fragments=[fragment])


@pytest.mark.parametrize("pseudo", [False, True])
def test_a_mapped_pools_batch_is_the_samples_it_holds(tmp_path, pseudo):
    """One read per batch (``MappedTransfer.__getitems__``) gives what sample-by-sample reads
    give: labelled rows, then standardised pool rows with no label (or the teacher's)."""
    from kdistill.data.base import ArrayDataset, collate
    from kdistill.data.pool import MappedPool
    from kdistill.data.transfer import MappedTransfer, with_transfer

    rng = np.random.default_rng(0)
    np.save(tmp_path / "pool.npy", rng.random((20, 1, 4, 4), dtype=np.float32))
    pool = MappedPool(np.load(tmp_path / "pool.npy", mmap_mode="r"), {"mean": 0.5, "std": 0.25})
    train = ArrayDataset(torch.randn(6, 1, 4, 4), torch.arange(6) % 3)
    targets = torch.arange(20) % 3 if pseudo else None
    dataset = with_transfer(train, pool, targets)
    assert isinstance(dataset, MappedTransfer) and len(dataset) == 26
    indices = [25, 0, 7, 3, 6, 19]
    batch = collate(dataset.__getitems__(indices))
    one_by_one = torch.utils.data.default_collate([dataset[i] for i in indices])
    for key in ("input", "target", "index"):
        torch.testing.assert_close(batch[key], one_by_one[key])
    assert batch["target"][0].item() == (targets[19].item() if pseudo else UNLABELLED)
    torch.testing.assert_close(batch["input"][2], (torch.tensor(pool.array[1]) - 0.5) / 0.25)


def test_labelled_text_takes_a_text_file_or_a_table_as_its_transfer_set(tmp_path):
    """``data.unlabelled`` beside ``labelled_text``: a .txt of one text a line or a table with
    the same text column (its labels ignored, said once), tokenised as the labelled texts are;
    a text of the test split is refused (it would leak the test split)."""
    from test_bring_your_own_data import tiny_text_teacher, write_reviews

    from kdistill.data import load_dataset

    tiny_text_teacher(tmp_path / "teacher")
    write_reviews(tmp_path / "reviews.csv")
    (tmp_path / "pool.txt").write_text("the film was long\n\nthe acting was fine fun\n")
    (tmp_path / "pool.csv").write_text(
        "review,sentiment\nthe film was long,pos\nthe acting was fine fun,neg\n"
    )
    teacher = str(tmp_path / "teacher")
    options = {"text": "review", "label": "sentiment", "tokenizer": teacher, "max_length": 8}
    data = str(tmp_path / "reviews.csv")
    pools = [
        load_dataset("labelled_text", path=data, unlabelled=str(tmp_path / name), **options)
        for name in ("pool.txt", "pool.csv")
    ]
    for splits in pools:
        pool = splits.unlabelled
        assert len(pool) == 2 and (pool.targets == UNLABELLED).all()
    torch.testing.assert_close(pools[0].unlabelled.input_ids, pools[1].unlabelled.input_ids)
    first = pools[0].unlabelled[0]["input"]["input_ids"]
    assert first[0] == 2 and first.shape == (8,)  # [CLS] the film was [UNK] [SEP], padded
    recipe = [
        "data.dataset=labelled_text",
        f"data.path={data}",
        "data.options={text: review, label: sentiment, max_length: 8}",
        f"data.options.tokenizer={teacher}",
        "teacher.epochs=1",
        "train.epochs=1",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
    ]
    result = call_cli("run", *recipe, "data.unlabelled=pool.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("they are ignored") == 1
    summary = json.loads(next(tmp_path.glob("runs/*/summary.json")).read_text())
    assert summary["data"]["sizes"]["unlabelled"] == 2
    words = ("good", "great", "fine", "bad", "awful", "poor")  # every text write_reviews makes
    every = {f"the {n} was {w}" for n in ("film", "plot", "acting") for w in words}
    (tmp_path / "leak.txt").write_text("\n".join(sorted(every)) + "\n")
    refused_without_changes(
        tmp_path, "run", *recipe, "data.unlabelled=leak.txt", fragments=["identical to test texts"]
    )


def test_the_rests_labels_are_dropped_once_the_data_is_loaded():
    """A transfer set's labels are read from the bundled file with its inputs; only
    ``teacher.data: rest`` uses them, and no split, student or file keeps them."""
    from kdistill.run.config import load_config
    from kdistill.run.plan import load_data

    recipe = load_config(None, ["data.dataset=digits", "data.subset=300", "data.unlabelled=rest"])
    splits = load_data(recipe)
    assert len(splits.unlabelled) == 1797 - 300 and splits.rest_targets is None
