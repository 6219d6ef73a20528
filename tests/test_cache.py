"""Teacher cache: built once, read by sample index, the same losses as the live teacher,
refused when it does not match, never used when truncated or corrupted."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_RECIPE
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, create_model
from kdistill.data import load_dataset
from kdistill.data.augment import augmented
from kdistill.io.tensors import CheckpointError
from kdistill.methods import Term, hinton_kd
from kdistill.teachers.cache import CachedTeacher, CacheMismatchError, TeacherCache, build_cache

FINGERPRINT = {
    "teacher": "abc",
    "data": {"dataset": "digits"},
    "taps": ["stages.1"],
    "dtype": "float32",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    splits = load_dataset("digits", subset=300)
    teacher = Teacher(
        create_model("cnn", width=8, depth=2, input_shape=(1, 8, 8)), taps=["stages.1"]
    )
    root = tmp_path_factory.mktemp("cache") / "c"
    cache = build_cache(
        root, teacher, splits.train, fingerprint=FINGERPRINT, dtype="float32", batch_size=64
    )
    return splits, teacher, cache, root


def test_cached_and_live_distillation_give_the_same_losses(setup):
    splits, teacher, cache, _ = setup
    torch.manual_seed(1)
    student = create_model("cnn_tiny", input_shape=(1, 8, 8))
    terms = hinton_kd() + [
        Term("hint", "hint", student="stages.1", teacher="stages.1", connector="auto", weight=10.0)
    ]
    example = next(iter(DataLoader(splits.train, batch_size=2)))
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=example)
    cached = CachedTeacher(cache)
    for batch in DataLoader(
        splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    ):
        live, read = distiller(batch, teacher(batch)), distiller(batch, cached(batch))
        for key in ("loss", "loss/ce", "loss/kd", "loss/hint"):
            torch.testing.assert_close(live[key], read[key], rtol=1e-5, atol=1e-6)


def test_lookup_is_by_sample_index_not_batch_position(setup):
    splits, teacher, cache, _ = setup
    index = torch.tensor([5, 0, 17])
    batch = {"input": splits.train.inputs[index], "index": index}
    torch.testing.assert_close(
        cache.lookup(index).logits, teacher(batch).logits, rtol=1e-5, atol=1e-6
    )


def test_float16_cache_is_close_and_half_the_size(setup, tmp_path):
    splits, teacher, cache32, _ = setup
    cache16 = build_cache(
        tmp_path / "c16", teacher, splits.train, fingerprint=FINGERPRINT, dtype="float16"
    )
    index = torch.arange(50)
    torch.testing.assert_close(
        cache16.lookup(index).logits, cache32.lookup(index).logits, rtol=2e-3, atol=2e-3
    )
    assert (
        cache16.meta["arrays"]["logits"]["bytes"] < 0.6 * cache32.meta["arrays"]["logits"]["bytes"]
    )


def test_a_cache_larger_than_the_free_disk_is_refused_before_it_is_written(
    setup, tmp_path, monkeypatch
):
    import shutil

    from kdistill.errors import UserError

    splits, teacher, _, _ = setup
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(
        UserError,
        match=(
            r"teacher.cache: the teacher's outputs would take [\d.]+ MB at .*full, but its disk "
            r"has 0.0 MB free: set teacher.cache_topk"
        ),
    ):
        build_cache(tmp_path / "full", teacher, splits.train, fingerprint=FINGERPRINT, views=3)
    assert not list((tmp_path / "full").glob("*.npy"))  # refused before any file was made
    monkeypatch.undo()
    assert (
        build_cache(
            tmp_path / "fits", teacher, splits.train, fingerprint=FINGERPRINT, views=3
        ).views
        == 3
    )


def test_a_mismatched_cache_is_refused_naming_the_field(setup):
    _, _, cache, _ = setup
    cache.check(FINGERPRINT)
    with pytest.raises(CacheMismatchError, match="teacher"):
        cache.check({**FINGERPRINT, "teacher": "other weights"})
    with pytest.raises(CacheMismatchError, match="taps"):
        cache.check({**FINGERPRINT, "taps": []})


def test_truncated_or_corrupted_cache_is_detected(setup, tmp_path):
    splits, teacher, _, _ = setup
    root = tmp_path / "bad"
    build_cache(root, teacher, splits.train, fingerprint=FINGERPRINT, dtype="float32")
    data = bytearray((root / "logits.npy").read_bytes())
    data[-3] ^= 0x55
    (root / "logits.npy").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="logits.npy.*checksum"):
        TeacherCache(root)
    (root / "logits.npy").write_bytes(bytes(data[:-100]))
    with pytest.raises(CheckpointError, match="truncated"):
        TeacherCache(root)
    (root / "meta.json").unlink()  # an interrupted build never wrote its metadata
    with pytest.raises(CheckpointError, match="kdistill cache"):
        TeacherCache(root)


def test_augmented_views_replay_what_training_sees(tmp_path):
    splits = load_dataset("digits", subset=200)
    teacher = Teacher(create_model("mlp", width=16, input_shape=(1, 8, 8)))
    train = augmented(splits.train, "shift", seed=3)
    cache = build_cache(
        tmp_path / "aug", teacher, train, fingerprint=FINGERPRINT, views=3, dtype="float32"
    )
    cached = CachedTeacher(cache)
    for epoch in (1, 2, 3):
        train.set_epoch(epoch)
        cached.set_epoch(epoch)
        batch = next(iter(DataLoader(train, batch_size=16)))
        torch.testing.assert_close(
            cached(batch).logits, teacher(batch).logits, rtol=1e-5, atol=1e-6
        )
    # the views differ from each other: one cached output per augmented input
    assert not np.allclose(cache.arrays["logits"][0], cache.arrays["logits"][1])
    assert json.loads((tmp_path / "aug" / "meta.json").read_text())["views"] == 3


QUICK = [
    *TINY_RECIPE,
    "teacher.kwargs={width: 64}",
    "train.augment=none",
    "train.mix=none",
    "teacher.epochs=2",
    "train.epochs=2",
]


def test_kdistill_cache_then_runs_read_it(tmp_path, capsys):
    from kdistill.cli import main

    assert main(["cache", *QUICK, f"output.dir={tmp_path}"]) == 0
    built = capsys.readouterr().out
    root = next((tmp_path / ".cache").iterdir())
    stamp = (root / "logits.npy").stat().st_mtime_ns
    assert str(root) in built
    assert main(["run", *QUICK, "teacher.cache=true", f"output.dir={tmp_path}", "name=cached"]) == 0
    assert (root / "logits.npy").stat().st_mtime_ns == stamp  # read, not rebuilt
    assert "teacher cache:" not in capsys.readouterr().out  # no teacher pass in the run
    assert main(["run", *QUICK, f"output.dir={tmp_path}", "name=live"]) == 0
    cached = json.loads((tmp_path / "cached" / "summary.json").read_text())
    live = json.loads((tmp_path / "live" / "summary.json").read_text())
    # float16 logits change the soft targets by ~1e-3: the two students end up very close
    assert abs(cached["student"]["accuracy"] - live["student"]["accuracy"]) <= 0.03


def test_cache_dir_of_another_teacher_is_refused(tmp_path, capsys):
    from kdistill.cli import main

    shared = tmp_path / "shared_cache"
    assert main(["cache", *QUICK, f"output.dir={tmp_path}", f"teacher.cache_dir={shared}"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                *QUICK,
                "teacher.cache=true",
                f"teacher.cache_dir={shared}",
                "teacher.kwargs={width: 32}",
                f"output.dir={tmp_path}",
                "name=other",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "shared_cache" in err and "teacher" in err and len(err.splitlines()) == 1


# --- sparse (top-k + tail mass) logits, for large vocabularies ---------------------------------


def test_topk_cache_is_exact_on_the_top_k_and_keeps_the_tail_mass(setup, tmp_path):
    from kdistill.losses import SparseTeacher

    splits, teacher, _, _ = setup
    for temperature in (1.0, 4.0):  # the softened target, exact at the temperature it was made for
        cache = build_cache(
            tmp_path / f"top3-{temperature}",
            teacher,
            splits.train,
            fingerprint=FINGERPRINT,
            dtype="float32",
            topk=3,
            temperature=temperature,
        )
        assert "logits" not in cache.arrays and cache.arrays["topk.index"].dtype == np.int32
        index = torch.arange(40)
        live = torch.log_softmax(
            teacher({"input": splits.train.inputs[index], "index": index}).logits / temperature,
            dim=-1,
        )
        read = cache.lookup(index).logits
        assert (
            isinstance(read, SparseTeacher)
            and read.temperature == temperature
            and read.shape == live.shape
        )
        top = live.topk(3, dim=-1)
        torch.testing.assert_close(read.indices.long(), top.indices)
        torch.testing.assert_close(read.log_probs, top.values, rtol=1e-5, atol=1e-6)
        tail = 1 - top.values.exp().sum(-1)
        torch.testing.assert_close(read.tail_mass, tail, rtol=1e-4, atol=1e-7)


def test_topk_cache_with_no_tail_left_gives_finite_kd_loss(setup, tmp_path):
    from kdistill.losses import SparseTeacher, kd
    from kdistill.losses.token import kd_topk

    splits, teacher, _, _ = setup
    # k = all 10 classes: exact; a peaked teacher whose tail underflows must not produce NaN.
    whole = build_cache(
        tmp_path / "all",
        teacher,
        splits.train,
        fingerprint=FINGERPRINT,
        dtype="float32",
        topk=10,
        temperature=4.0,
    )
    index = torch.arange(20)
    live = teacher({"input": splits.train.inputs[index], "index": index}).logits
    student = torch.randn(20, 10)
    torch.testing.assert_close(
        kd_topk(student, whole.lookup(index).logits), kd(student, live), rtol=1e-5, atol=1e-6
    )
    peaked = SparseTeacher(
        torch.tensor([[2]]),
        torch.tensor([[0.0]]),
        torch.tensor([-torch.inf]),
        temperature=1.0,
        vocab_size=10,
    )
    student = torch.zeros(1, 10, requires_grad=True)
    loss = kd_topk(student, peaked, temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    torch.testing.assert_close(
        loss, torch.tensor(np.log(10.0), dtype=loss.dtype), rtol=1e-5, atol=1e-5
    )


def test_cache_topk_recipe_key_builds_a_sparse_cache(tmp_path):
    from kdistill.cli import main

    assert (
        main(
            ["run", *QUICK, "teacher.cache=true", "teacher.cache_topk=4", f"output.dir={tmp_path}"]
        )
        == 0
    )
    root = next((tmp_path / ".cache").iterdir())
    meta = json.loads((root / "meta.json").read_text())
    # the default method is kd at T = 4: the stored target is exact at that temperature
    assert meta["topk"] == {"k": 4, "classes": 10, "temperature": 4.0}
    assert meta["fingerprint"]["topk"] == {"k": 4, "temperature": 4.0}
    assert {"topk.log_probs", "topk.index", "topk.tail"} <= set(meta["arrays"])


@pytest.mark.parametrize("option", ["on_policy: {fraction: 0.5}", "init_from_teacher: true"])
def test_options_needing_the_live_teacher_are_refused_before_any_training(option, tmp_path, capsys):
    from kdistill.cli import main

    code = main(
        [
            "run",
            str(ROOT / "configs" / "lm_kd.yaml"),
            "teacher.cache=true",
            f"distill.params={{{option}}}",
            f"output.dir={tmp_path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "needs the live teacher" in err and "teacher.cache=false" in err and "Traceback" not in err
    )
    assert not any(tmp_path.iterdir())  # refused before the teacher or the scratch student trained


def test_the_cache_is_built_in_batches_the_cpu_runs_fastest():
    from kdistill.run.school import CPU_CACHE_BATCH, cache_batch_size

    assert cache_batch_size(512, torch.device("cpu")) == CPU_CACHE_BATCH == 256
    assert cache_batch_size(64, torch.device("cpu")) == 64  # never larger than asked
    assert cache_batch_size(512, torch.device("cuda")) == 512  # a GPU keeps the evaluation batch
