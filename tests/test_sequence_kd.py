"""Sequence-level KD (Kim & Rush 2016): the teacher's generations from prompts of the training
windows, kept as a reusable data set, and the batch transform that trains on them alone or
mixed with the data (and with token-level KD)."""

from __future__ import annotations

import json

import pytest
import torch
from test_lm import QUICK, tiny_gpt

from kdistill.data import load_dataset
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.training.sequences import SequenceKD, teacher_sequences, training_prompts


@pytest.fixture(scope="module")
def corpus():
    """400 windows of 32 characters of Python's documentation (as tests/test_lm.py reads it)."""
    return load_dataset("text", block_size=32, subset=400)


def test_greedy_teacher_sequences_are_the_teachers_argmax_continuations(corpus):
    torch.manual_seed(0)
    teacher = tiny_gpt(corpus.num_classes).eval()
    prompts = training_prompts(corpus.train, 5, 6)
    assert prompts.shape == (5, 6)
    assert torch.equal(prompts[0], corpus.train[0]["input"][:6])  # evenly spaced, first and last
    made = teacher_sequences(teacher, prompts, 33, temperature=0.0, batch_size=2)
    assert made.shape == (5, 33) and torch.equal(made[:, :6], prompts)
    ids = prompts.clone()
    with torch.no_grad():
        while ids.shape[1] < 33:
            ids = torch.cat([ids, teacher(ids[:, -32:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(made, ids)
    # sampled: reproducible from the seed, another seed another draw
    again = teacher_sequences(teacher, prompts, 33, temperature=1.0, seed=3, batch_size=2)
    same = teacher_sequences(teacher, prompts, 33, temperature=1.0, seed=3, batch_size=2)
    other = teacher_sequences(teacher, prompts, 33, temperature=1.0, seed=4, batch_size=2)
    assert torch.equal(again, same) and not torch.equal(again, other)


def batch_of(corpus, rows):
    return torch.utils.data.default_collate([corpus.train[i] for i in rows])


@pytest.mark.parametrize("fraction, replaced", [(1.0, 4), (0.5, 2)])
def test_sequence_kd_replaces_its_share_and_counts_the_teachers_tokens_only(
    corpus,
    fraction,
    replaced,
):
    sequences = torch.randint(0, corpus.num_classes, (7, 33))
    transform = SequenceKD(sequences, prompt=5, fraction=fraction, seed=0)
    batch = batch_of(corpus, range(4))
    out = transform(batch)
    changed = [r for r in range(4) if not torch.equal(out["input"][r], batch["input"][r])]
    assert len(changed) == replaced == transform.replaced
    for r in changed:
        row = next(s for s in sequences if torch.equal(s[:-1], out["input"][r]))
        assert torch.equal(out["target"][r], row[1:])  # the teacher's tokens are the targets
        assert not (out["target"][r] == IGNORE_INDEX).any()
        # position j predicts token j + 1: the prompt's 5 tokens are predicted at 0..3, not counted
        assert not out["mask"][r, :4].any() and out["mask"][r, 4:].all()
    for r in set(range(4)) - set(changed):
        assert torch.equal(out["mask"][r], batch["mask"][r])
    counted = replaced * 28 / (replaced * 28 + (4 - replaced) * 32)
    assert out["metric/sequence_kd_share"].item() == pytest.approx(counted)


def test_sequence_kd_draws_resume_from_a_checkpoint(corpus):
    sequences = torch.randint(0, corpus.num_classes, (9, 33))
    first = SequenceKD(sequences, prompt=4, fraction=0.5, seed=1)
    batch = batch_of(corpus, range(5))
    first(batch)
    state = first.state_dict()
    expected = first(batch)
    resumed = SequenceKD(sequences, prompt=4, fraction=0.5, seed=1)
    resumed.load_state_dict(state)
    again = resumed(batch)
    assert torch.equal(again["input"], expected["input"])
    assert torch.equal(again["mask"], expected["mask"])


def test_a_recipe_distils_on_the_teachers_sequences_kept_for_the_next_run(tmp_path, capsys):
    from kdistill.cli import main

    params = (
        "distill.params={loss: forward_kl, sequence_kd: {fraction: 0.5, sequences: 12, prompt: 8}}"
    )
    settings = ["run", "configs/lm_kd.yaml", *QUICK, params, f"output.dir={tmp_path}"]
    assert main([*settings, "name=first"]) == 0
    made = [line for line in capsys.readouterr().out.splitlines() if "teacher sequences" in line]
    assert len(made) == 1 and "12 of 33 tokens (8 of prompt each)" in made[0]
    files = list((tmp_path / ".cache").glob("sequences-*.safetensors"))
    assert len(files) == 1
    history = [
        json.loads(line)
        for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()
        if '"student"' in line
    ]
    shares = [r["metric/sequence_kd_share"] for r in history if "metric/sequence_kd_share" in r]
    assert shares and 0 < shares[-1] < 1
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["student"]["perplexity"] != summary["scratch"]["perplexity"]
    # the next run (the same teacher, another student) reads them: the teacher generates nothing
    assert main([*settings, "name=second", "student.kwargs={n_layer: 1, n_embd: 24}"]) == 0
    assert "teacher sequences" not in capsys.readouterr().out
    assert list((tmp_path / ".cache").glob("sequences-*.safetensors")) == files


@pytest.mark.parametrize(
    "setting, fragment",
    [
        (
            "distill.params={sequence_kd: true, on_policy: {fraction: 0.5}}",
            "on_policy and sequence_kd each choose what a batch holds",
        ),
        ("distill.params={sequence_kd: {prompt: 40}}", "sequence_kd.prompt: 40; at most 31"),
        ("distill.params={sequence_kd: {fraction: 2}}", "sequence_kd.fraction: 2"),
        ("distill.params={sequence_kd: {beams: 4}}", "sequence_kd: true or a mapping of"),
        (
            "distill.params={sequence_kd: true}\nteacher.cache=true",
            "distill.params.sequence_kd needs the live teacher",
        ),
    ],
)
def test_bad_sequence_kd_settings_are_refused_in_one_line(tmp_path, capsys, setting, fragment):
    from kdistill.cli import main

    given = setting.split("\n")
    code = main(["check", "configs/lm_kd.yaml", *QUICK, *given, f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / ".cache").exists()
