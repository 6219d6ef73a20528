"""A hidden-state teacher cache: a language model's final hidden states, and its head once, give
back the exact logits, so every divergence (forward and reverse KL, JSD) reads from the cache
what it reads from the live teacher, at H of V numbers per position; what it cannot serve (a
teacher whose logits are not head(hidden states), a damaged head, another signal) is refused."""

import copy
import json

import numpy as np
import pytest
import torch
from test_lm import QUICK
from torch.utils.data import DataLoader, default_collate

from kdistill import create_model
from kdistill.data import load_dataset
from kdistill.distiller import Teacher
from kdistill.errors import UserError
from kdistill.io.tensors import CheckpointError, load_tensors, save_tensors
from kdistill.losses import chunked_token_loss, forward_kl, jsd, reverse_kl
from kdistill.modeling import LazyLogits
from kdistill.teachers.cache import (
    CachedTeacher,
    CacheMismatchError,
    TeacherCache,
    build_cache,
    open_or_build,
)
from kdistill.teachers.identity import precision_of

WIDTH = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    splits = load_dataset("text", block_size=32, subset=96)
    vocab = splits.num_classes
    model = create_model(
        "gpt", num_classes=vocab, input_shape=(32,), n_layer=1, n_head=2, n_embd=WIDTH
    )
    teacher = Teacher(model)
    root = tmp_path_factory.mktemp("hidden") / "c"
    cache = build_cache(
        root, teacher, splits.train, fingerprint={}, dtype="float32", hidden=True, batch_size=32
    )
    return splits, teacher, cache, root


def batch_of(splits, rows):
    return default_collate([splits.train[i] for i in rows])


def test_the_cache_gives_back_the_live_teachers_logits(built):
    splits, teacher, cache, root = built
    vocab = splits.num_classes
    assert cache.signal == {"kind": "hidden", "classes": vocab}
    assert not teacher.lazy_logits  # the build asked for hidden states, then put it back
    shape = cache.meta["arrays"]["hidden"]["shape"]
    assert shape == [1, len(splits.train), 32, WIDTH] and set(cache.meta["arrays"]) == {"hidden"}
    batch = batch_of(splits, [7, 0, 40])
    read = CachedTeacher(cache)(batch).logits
    assert isinstance(read, LazyLogits) and read.shape == (3, 32, vocab)
    torch.testing.assert_close(read.materialize(), teacher(batch).logits, rtol=1e-6, atol=1e-6)
    # the head is stored once, not per position: the arrays are H of V numbers per position
    per_position = cache.meta["arrays"]["hidden"]["bytes"] / (len(splits.train) * 32)
    assert per_position == pytest.approx(4 * WIDTH, rel=0.01)
    head = root / "head.safetensors"
    assert cache.meta["head"]["bytes"] == head.stat().st_size and cache.meta["head"]["digest"]


@pytest.mark.parametrize(
    "loss, params",
    [(forward_kl, {}), (reverse_kl, {}), (jsd, {"beta": 0.5}), (forward_kl, {"temperature": 2.0})],
)
def test_every_divergence_reads_the_cache_as_the_live_teacher(built, loss, params):
    """Values and gradients of the chunked losses equal the dense loss of the live logits,
    JSD and the reverse KL included (what a top-k or sampled cache cannot serve exactly)."""
    splits, teacher, cache, _ = built
    batch = batch_of(splits, list(range(8)))
    torch.manual_seed(1)
    hidden = torch.randn(8, 32, 16, requires_grad=True)
    head = torch.randn(splits.num_classes, 16, requires_grad=True)
    value = chunked_token_loss(
        loss, hidden, head, CachedTeacher(cache)(batch).logits, chunk_size=50, **params
    )
    grads = torch.autograd.grad(value, (hidden, head))
    dense = loss(hidden @ head.T, teacher(batch).logits, **params)
    expected = torch.autograd.grad(dense, (hidden, head))
    torch.testing.assert_close(value, dense, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_opened_again_it_is_checked_and_another_signal_is_refused(built, tmp_path):
    splits, teacher, cache, root = built
    settings = {"fingerprint": {}, "dtype": "float32", "batch_size": 32}
    opened, made = open_or_build(root, teacher, splits.train, hidden=True, **settings)
    assert not made and opened.signal["kind"] == "hidden"
    for other in ({}, {"topk": 4}, {"samples": 3}):
        with pytest.raises(CacheMismatchError, match="final hidden states and head"):
            open_or_build(root, teacher, splits.train, **other, **settings)
    topk = tmp_path / "topk"
    build_cache(topk, teacher, splits.train, topk=4, **settings)
    with pytest.raises(CacheMismatchError, match="asks for the teacher's final hidden states"):
        open_or_build(topk, teacher, splits.train, hidden=True, **settings)


def test_a_bf16_run_builds_with_its_teacher_in_bf16_and_checks_it_so(built, tmp_path):
    """The build runs the teacher in the run's precision, as training runs it live (bf16
    products on AMX CPUs and GPUs: the build at bf16 speed); the fingerprint keeps it apart
    from a float32 run's cache, and the probe on opening runs the teacher the same way."""
    from kdistill.training.acceleration import make_accelerator

    splits, teacher, _, _ = built
    bf16 = make_accelerator("cpu", mixed_precision="bf16")
    assert precision_of(bf16) == {"precision": "bf16"}
    settings = {"dtype": "float32", "batch_size": 32, "hidden": True, "accelerator": bf16}
    root = tmp_path / "c"
    cache, made = open_or_build(
        root, teacher, splits.train, fingerprint=precision_of(bf16), **settings
    )
    assert made
    stored = torch.from_numpy(np.array(cache.arrays["hidden"][0]))
    teacher.lazy_logits = True
    try:
        loader = DataLoader(splits.train, batch_size=32)
        with torch.inference_mode():
            with torch.autocast("cpu", torch.bfloat16):
                at_bf16 = torch.cat([teacher(b).logits.hidden.float() for b in loader])
            at_float32 = torch.cat([teacher(b).logits.hidden for b in loader])
    finally:
        teacher.lazy_logits = False
    torch.testing.assert_close(stored, at_bf16, rtol=0, atol=0)
    assert (stored - at_float32).abs().max() > 1e-3
    opened, made = open_or_build(
        root, teacher, splits.train, fingerprint=precision_of(bf16), **settings
    )
    assert not made  # its own probe, in bf16, passes
    other = Teacher(copy.deepcopy(teacher.module))
    with torch.no_grad():
        for p in other.module.parameters():
            p.mul_(1.5)
    with pytest.raises(CacheMismatchError, match="differ from the live teacher"):
        open_or_build(root, other, splits.train, fingerprint=precision_of(bf16), **settings)
    float32 = make_accelerator("cpu")
    assert precision_of(float32) == {}
    with pytest.raises(CacheMismatchError, match="another precision"):  # nor a float32 run
        opened.check({})


def test_a_damaged_or_missing_head_is_refused(built, tmp_path):
    splits, teacher, _, _ = built
    root = tmp_path / "c"
    build_cache(root, teacher, splits.train, fingerprint={}, dtype="float16", hidden=True)
    head = root / "head.safetensors"
    weights = load_tensors(head, expect_digest=True)[0]
    save_tensors(head, {"weight": weights["weight"] + 1})  # a sound file, another cache's head
    with pytest.raises(CheckpointError, match="head is missing or corrupted"):
        TeacherCache(root, verify=False)
    save_tensors(head, weights)
    TeacherCache(root)  # its own head again
    data = bytearray(head.read_bytes())
    data[-1] ^= 1
    head.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="head is missing or corrupted"):
        TeacherCache(root)
    head.unlink()
    with pytest.raises(CheckpointError, match="head is missing or corrupted"):
        TeacherCache(root, verify=False)
    meta = json.loads((root / "meta.json").read_text())
    del meta["head"]
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="without its head's checksum"):
        TeacherCache(root, verify=False)


def test_a_teacher_without_hidden_states_is_refused_in_one_line(tmp_path):
    splits = load_dataset("digits", subset=60)
    teacher = Teacher(create_model("mlp", width=8, input_shape=(1, 8, 8)))
    with pytest.raises(UserError, match="teacher.cache_hidden: the teacher's output needs a"):
        build_cache(tmp_path / "c", teacher, splits.train, fingerprint={}, hidden=True)
    loader = DataLoader(splits.train, batch_size=4)
    assert not isinstance(teacher(next(iter(loader))).logits, LazyLogits)


# configs/lm_kd.yaml at a test's size, JSD against the teacher
LM_QUICK = [*QUICK, "output.progress=false", "distill.params={loss: jsd, beta: 0.5}"]


@pytest.mark.integration
@pytest.mark.parametrize("precision, rel", [("no", 1e-4), ("bf16", 2e-2)])
def test_a_recipe_with_cache_hidden_trains_the_live_teachers_student(
    precision, rel, tmp_path, capsys
):
    """The recipe from a hidden-state cache (float32, built by `kdistill cache`) and with the
    live teacher: the same distilled student, JSD and all; in bf16 too, the cache built with
    the teacher in bf16 as it runs live (its outputs move with the batch at bf16: rel 2e-2)."""
    from kdistill.cli import main

    run = [*LM_QUICK, f"train.mixed_precision={precision}"]
    live = ["run", "configs/lm_kd.yaml", *run, f"output.dir={tmp_path}", "name=live"]
    assert main(live) == 0
    cached = [
        "configs/lm_kd.yaml",
        *run,
        f"output.dir={tmp_path}",
        "name=cached",
        "teacher.cache=true",
        "teacher.cache_hidden=true",
        "teacher.cache_dtype=float32",
    ]
    assert main(["cache", *cached]) == 0
    assert "(hidden, head); teacher" in capsys.readouterr().out
    assert main(["run", *cached]) == 0
    meta = json.loads((next((tmp_path / ".cache").iterdir()) / "meta.json").read_text())
    assert meta["signal"]["kind"] == "hidden" and meta["fingerprint"]["hidden"] is True
    assert meta["fingerprint"].get("precision", "no") == precision
    summaries = [
        json.loads((tmp_path / n / "summary.json").read_text()) for n in ("live", "cached")
    ]
    ppl = [s["student"]["perplexity"] for s in summaries]
    assert ppl[0] == pytest.approx(ppl[1], rel=rel)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher.cache_hidden=true"], "teacher.cache_hidden (the exact logits) is a cache"),
        (
            ["teacher.cache=true", "teacher.cache_hidden=true", "teacher.cache_topk=8"],
            "without teacher.cache_topk or teacher.cache_samples",
        ),
    ],
)
def test_recipe_settings_a_hidden_cache_cannot_take_exit_2(overrides, message, tmp_path, capsys):
    from kdistill.cli import main

    code = main(["run", "configs/lm_kd.yaml", *LM_QUICK, *overrides, f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_an_image_teacher_with_cache_hidden_exits_2_before_training(tmp_path, capsys):
    from test_cache import QUICK  # the suite's quick image recipe

    from kdistill.cli import main

    args = ["run", *QUICK, "teacher.cache=true", "teacher.cache_hidden=true"]
    code = main([*args, f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teacher.cache_hidden: the teacher (" in err, err
    assert len(err.splitlines()) == 1 and not any(tmp_path.glob("*/checkpoints/*"))


def test_a_build_killed_after_writing_the_head_is_rebuilt(built, tmp_path):
    """Before meta.json, a build has written its marker, arrays and head (and maybe the head's
    temporary file): a rebuild takes the folder back; a user's file there is refused."""
    splits, teacher, _, _ = built
    root = tmp_path / "c"
    build_cache(root, teacher, splits.train, fingerprint={}, hidden=True)
    (root / "meta.json").unlink()
    (root / ".head.safetensors.4242.tmp").write_bytes(b"partial")
    cache = build_cache(root, teacher, splits.train, fingerprint={}, hidden=True)
    assert cache.signal["kind"] == "hidden" and not (root / ".head.safetensors.4242.tmp").exists()
    (root / "meta.json").unlink()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds 'notes.txt'"):
        build_cache(root, teacher, splits.train, fingerprint={}, hidden=True)
    assert (root / "notes.txt").read_text() == "mine"
