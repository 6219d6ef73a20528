"""The cross-tokenizer teacher cache: the teacher's top k over its own tokens of the whole text,
keyed by the teacher and the text, so one cache serves any student tokenizer."""

from __future__ import annotations

import pytest
import torch
from test_cross_tokenizer import tiny_plays

from kdistill.errors import UserError
from kdistill.io.tensors import CheckpointError
from kdistill.losses.cross_tokenizer import hybrid
from kdistill.models import create_model
from kdistill.teachers.cross_tokenizer import frozen_teacher
from kdistill.teachers.identity import teacher_identity
from kdistill.teachers.text_cache import TextCache, TextCachedTeacher, text_fingerprint

K = 8


def teacher_for(splits):
    shape = tuple(splits.identity["teacher_input_shape"])
    torch.manual_seed(0)
    return create_model("gpt", num_classes=320, input_shape=shape, n_layer=1, n_embd=16)


def open_cache(root, model, splits, dtype="float32"):
    train = splits.train
    length = int(splits.identity["teacher_input_shape"][0])
    fingerprint = text_fingerprint(
        teacher_identity(model),
        train.teacher_tokenizer,
        train.text,
        k=K,
        dtype=dtype,
    )
    return TextCache(root, fingerprint, train.text, length=length)


def live_position(model, ids, p, stride, context):
    """The teacher's log-probabilities at text position ``p`` read as the grid reads it: from
    the start of its grid window's context."""
    start = max((p // stride) * stride - context, 0)
    with torch.no_grad():
        return torch.log_softmax(model(ids[None, start : p + 1]).float()[0, -1], -1)


def test_the_cache_holds_the_teachers_top_k_at_every_position_with_byte_spans(
    tmp_path, monkeypatch
):
    splits = tiny_plays(tmp_path, monkeypatch)
    model = teacher_for(splits).eval()
    cache = open_cache(tmp_path / "cache", model, splits)
    text = splits.train.text
    # byte spans: contiguous over the UTF-8 text, one per teacher token
    assert text.spans.shape == (len(text.ids), 2) and text.spans[0, 0] == 0
    assert torch.equal(text.spans[1:, 0], text.spans[:-1, 1])
    windows = cache.needed(
        splits.train.teacher["start"], splits.train.teacher["input_ids"].shape[-1]
    )
    assert cache.build(model, windows, batch_size=4, device="cpu") == len(windows) > 0
    assert cache.stored() == windows
    context = cache.length - cache.stride
    for p in (
        windows[0] * cache.stride,
        windows[0] * cache.stride + 3,
        min(windows[-1] * cache.stride + 1, len(text.ids) - 2),  # the text's last
    ):
        indices, log_probs, tail, target = cache.gather(torch.tensor([p]))
        log_p = live_position(model, text.ids, p, cache.stride, context)
        top = log_p.topk(K)
        torch.testing.assert_close(log_probs[0], top.values, atol=1e-5, rtol=0)
        assert torch.equal(indices[0].long(), top.indices)
        torch.testing.assert_close(target[0], log_p[text.ids[p + 1]], atol=1e-5, rtol=0)
        rest = log_p.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(tail[0], rest, atol=1e-5, rtol=0)


def test_the_cached_teacher_reads_each_windows_positions_with_its_alignment(tmp_path, monkeypatch):
    splits = tiny_plays(tmp_path, monkeypatch)
    model = teacher_for(splits)
    live = frozen_teacher(model, splits)
    cache = open_cache(tmp_path / "cache", model, splits)
    train = splits.train
    cache.build(
        model,
        cache.needed(train.teacher["start"], train.teacher["input_ids"].shape[-1]),
        batch_size=4,
        device="cpu",
    )
    cached = TextCachedTeacher(live.module, cache)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batch = torch.utils.data.default_collate([train[i] for i in (2, 0, 3)])
    aligned = cached(batch).logits
    assert not calls  # the teacher never runs
    starts = batch["teacher_start"]
    for row in range(3):
        for q in range(0, int((batch["teacher_bytes"][row] > 0).sum()), 5):
            p = int(starts[row]) + q
            assert int(batch["input"]["teacher_target"][row, q]) == int(train.text.ids[p + 1])
            log_p = live_position(
                model, train.text.ids, p, cache.stride, cache.length - cache.stride
            )
            torch.testing.assert_close(
                aligned.logits.log_probs[row, q], log_p.topk(K).values, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                aligned.target_log_prob[row, q], log_p[train.text.ids[p + 1]], atol=1e-5, rtol=0
            )
    assert torch.equal(aligned.chunk, batch["input"]["teacher_chunk"])
    # the chunk losses read it as they read the live teacher's
    student = create_model("gpt", num_classes=300, input_shape=(16,), n_layer=1, n_embd=16)
    logits = student(batch["input"]["input_ids"])
    value = hybrid(logits, aligned, batch["target"], mask=batch["mask"])
    value.backward()
    assert torch.isfinite(value) and student.tok_emb.weight.grad.abs().sum() > 0


def test_one_cache_serves_another_student_tokenizer_without_running_the_teacher(
    tmp_path, monkeypatch
):
    from kdistill.data.shakespeare import load_plays

    splits = tiny_plays(tmp_path, monkeypatch)
    model = teacher_for(splits)
    cache = open_cache(tmp_path / "cache", model, splits)
    every = list(range(len(splits.train.text.ids) // cache.stride + 1))
    cache.build(model, every, batch_size=8, device="cpu")
    other = load_plays(
        path=str(tmp_path / "plays"),
        tokenizer=str(tmp_path / "teacher.json"),
        student_tokenizer="bpe:280",
        block_size=16,
        max_tokens={"train": 48, "val": 32, "test": 32},
    )
    assert other.num_classes == 280 and other.train.text.digest == splits.train.text.digest
    # the same key: what the teacher reads, not the student's tokenizer
    again = open_cache(tmp_path / "cache", model, other)
    assert again.fingerprint == cache.fingerprint
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    train = other.train
    assert (
        again.build(
            model,
            again.needed(train.teacher["start"], train.teacher["input_ids"].shape[-1]),
            batch_size=8,
            device="cpu",
        )
        == 0
    )
    teacher = TextCachedTeacher(frozen_teacher(model, other).module, again)
    batch = torch.utils.data.default_collate([train[i] for i in range(len(train))])
    aligned = teacher(batch).logits
    assert (
        not calls and aligned.logits.log_probs.shape[:2] == batch["input"]["teacher_target"].shape
    )
    student = create_model("gpt", num_classes=280, input_shape=(16,), n_layer=1, n_embd=16)
    value = hybrid(
        student(batch["input"]["input_ids"]), aligned, batch["target"], mask=batch["mask"]
    )
    assert torch.isfinite(value) and value > 0


def test_a_damaged_or_foreign_cache_is_refused_in_one_line(tmp_path, monkeypatch):
    splits = tiny_plays(tmp_path, monkeypatch)
    model = teacher_for(splits)
    cache = open_cache(tmp_path / "cache", model, splits)
    cache.build(model, [0], batch_size=1, device="cpu")
    window = tmp_path / "cache" / "window-000000.safetensors"
    data = bytearray(window.read_bytes())
    data[-3] ^= 0xFF
    window.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted") as error:
        open_cache(tmp_path / "cache", model, splits).gather(torch.tensor([1]))
    assert "\n" not in str(error.value)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # another teacher: another fingerprint
    with pytest.raises(UserError, match="made for another teacher") as error:
        open_cache(tmp_path / "cache", model, splits)
    assert "\n" not in str(error.value)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(UserError, match="not a kdistill teacher cache"):
        open_cache(tmp_path / "mine", model, splits)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


def test_kdistill_run_caches_the_teacher_once_for_two_student_tokenizers(
    tmp_path, monkeypatch, capsys
):
    import json

    from test_cross_tokenizer import tiny_run

    from kdistill.run.config import load_config
    from kdistill.run.pipeline import run

    settings = tiny_run(
        tmp_path,
        monkeypatch,
        "teacher.kwargs={n_layer: 1, n_embd: 16, block_size: 64}",  # one teacher for both
        "teacher.cache=true",
        "teacher.cache_topk=16",
        "train.epochs=2",
        "output.progress=true",
    )
    computed = []
    for name, tokenizer in (("first", "bpe:300"), ("second", "bpe:280")):
        run(
            load_config(
                None, [*settings, f"data.options.student_tokenizer={tokenizer}", f"name={name}"]
            )
        )
        lines = [l for l in capsys.readouterr().out.splitlines() if "teacher text cache" in l]
        computed.append(int(lines[0].split(": ")[1].split()[0]) if lines else 0)
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert summary["student"]["bits_per_byte"] != summary["scratch"]["bits_per_byte"]
    caches = list((tmp_path / "runs" / ".cache").glob("text-*"))
    assert len(caches) == 1  # keyed by the teacher and the text, not the student's tokenizer
    stored = len(list(caches[0].glob("window-*.safetensors")))
    assert computed[0] > 0 and computed[0] + computed[1] == stored
    assert computed[1] < computed[0]  # the second student reads what the first one's run made


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("teacher.cache_samples=8", "teacher.cache_topk, not teacher.cache_samples"),
        ("teacher.cache_topk=null", "teacher.cache_topk with teacher.cache"),
    ],
)
def test_a_cache_the_chunk_losses_cannot_read_is_refused_in_one_line(
    tmp_path, monkeypatch, setting, fragment
):
    from test_cross_tokenizer import tiny_run

    from kdistill.errors import ConfigError
    from kdistill.run.config import load_config
    from kdistill.run.preflight import preflight

    settings = tiny_run(
        tmp_path, monkeypatch, "teacher.cache=true", "teacher.cache_topk=16", setting
    )
    with pytest.raises(ConfigError, match=fragment) as error:
        preflight(load_config(None, settings))
    assert "\n" not in str(error.value)


def test_kdistill_cache_builds_the_text_cache_a_run_then_reads(tmp_path, monkeypatch):
    from test_cross_tokenizer import tiny_run

    from kdistill.run.config import load_config
    from kdistill.run.pipeline import cache

    settings = tiny_run(
        tmp_path,
        monkeypatch,
        "teacher.cache=true",
        "teacher.cache_topk=16",
        "output.progress=false",
    )
    lines = []
    built = cache(load_config(None, settings), echo=lines.append)
    assert len(lines) == 1 and "teacher text cache for" in lines[0] and "top 16" in lines[0]
    assert built["windows"] and built["fingerprint"]["k"] == 16
    again = []
    assert cache(load_config(None, settings), echo=again.append)["windows"] == built["windows"]
