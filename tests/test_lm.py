"""Language modelling: the character corpus, the GPT, perplexity, token cross-entropy, sampling,
the on-policy (GKD) batch transform and its hook in ``fit``, and the recipe end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdistill import create_model
from kdistill.data import load_dataset
from kdistill.distiller import Distiller, Teacher
from kdistill.evaluation.language_model import evaluate_lm
from kdistill.losses import token_ce
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.methods import preset_terms
from kdistill.training.loop import Loop, train_loop
from kdistill.training.sampling import OnPolicy, sample


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("text", block_size=32, subset=400)


def tiny_gpt(vocab, **kwargs):
    return create_model(
        "gpt",
        num_classes=vocab,
        input_shape=(32,),
        **{"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0, **kwargs},
    )


def test_corpus_windows_targets_and_split(corpus):
    full = load_dataset("text", block_size=32)
    sizes = full.identity["characters"]
    assert sum(sizes.values()) > 400_000 and sizes["train"] > 6 * sizes["test"]
    assert full.identity == load_dataset("text", block_size=32).identity  # fixed split
    assert (
        full.identity["characters"]
        != load_dataset("text", block_size=32, seed=1).identity["characters"]
    )
    window = full.train[3]
    assert torch.equal(window["input"][1:], window["target"][:-1])  # target = the next character
    assert window["mask"].all()
    last = full.train[len(full.train) - 1]
    real = int(last["mask"].sum())
    assert 0 < real <= 32 and not last["mask"][real:].any()  # only the tail padding is masked
    codec = full.train.codec
    assert codec.decode(codec.encode("def f(x):\n")) == "def f(x):\n"
    assert full.num_classes == codec.vocab_size and full.task == "language_modelling"
    assert sum(corpus.identity["sizes"].values()) == 400


def test_token_ce_counts_only_real_positions():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    torch.testing.assert_close(
        token_ce(logits, target), F.cross_entropy(logits.reshape(-1, 7), target.reshape(-1))
    )
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    expected = F.cross_entropy(logits[mask], target[mask])
    garbage = logits.clone()
    garbage[~mask] = float("nan")
    torch.testing.assert_close(token_ce(garbage, target, mask=mask), expected)
    ignored = torch.where(mask, target, IGNORE_INDEX)
    torch.testing.assert_close(token_ce(logits, ignored), expected)
    assert token_ce(logits, target, mask=torch.zeros(2, 5, dtype=torch.bool)) == 0


def test_gpt_is_causal_and_trains(corpus):
    torch.manual_seed(0)
    model = tiny_gpt(corpus.num_classes).eval()
    x = corpus.train[0]["input"][None]
    changed = x.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % corpus.num_classes
    with torch.no_grad():
        torch.testing.assert_close(
            model(changed)[:, :20], model(x)[:, :20]
        )  # the past never sees the future
    model.train()
    batch = next(iter(DataLoader(corpus.train, batch_size=4)))
    token_ce(model(batch["input"]), batch["target"], mask=batch["mask"]).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.head.weight is model.tok_emb.weight  # tied


def test_perplexity_is_exp_of_mean_token_cross_entropy(corpus):
    torch.manual_seed(0)
    model = tiny_gpt(corpus.num_classes)
    loader = DataLoader(corpus.test, batch_size=7)
    result = evaluate_lm(model, loader)
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["input"])
            m = batch["mask"]
            nll += F.cross_entropy(logits[m], batch["target"][m], reduction="sum").item()
            count += int(m.sum())
    assert result["n"] == count
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    # Per test window (the bootstrap's units): summed nll and token count, adding up to the whole.
    windows = evaluate_lm(model, loader, outcomes=True)["outcomes"]
    assert len(windows.values) == len(corpus.test) and windows.weights.sum() == count
    assert windows.score() == pytest.approx(result["perplexity"], rel=1e-6)
    with torch.no_grad():  # a model that knows nothing: perplexity = vocabulary size
        model.head.weight.zero_()
    assert evaluate_lm(model, loader)["perplexity"] == pytest.approx(corpus.num_classes, rel=1e-4)


def test_sampling_is_seeded_and_restores_the_mode(corpus):
    model = tiny_gpt(corpus.num_classes).train()
    prefix = corpus.test[0]["input"][None, :8]
    a = sample(model, prefix, 12, generator=torch.Generator().manual_seed(1), context=32)
    b = sample(model, prefix, 12, generator=torch.Generator().manual_seed(1), context=32)
    assert torch.equal(a, b) and a.shape == (1, 20) and torch.equal(a[:, :8], prefix)
    assert model.training
    greedy = sample(model, prefix, 30, temperature=0, context=32)  # longer than the block: cropped
    assert greedy.shape == (1, 38)


def test_on_policy_transform_replaces_a_fraction_with_student_continuations(corpus):
    torch.manual_seed(0)
    student = tiny_gpt(corpus.num_classes)
    batch = next(iter(DataLoader(corpus.train, batch_size=8)))
    transform = OnPolicy(student, fraction=0.25, continuation=6, seed=0)
    out = transform(batch)
    replaced = (out["target"] == IGNORE_INDEX).any(1)
    assert int(replaced.sum()) == 2 and transform.replaced == 2  # round(0.25 · 8)
    assert torch.equal(out["input"][~replaced], batch["input"][~replaced])
    rows = replaced.nonzero().flatten()
    # the prompt is the real text; the sampled tokens are the input's continuation
    assert torch.equal(out["input"][rows, : 32 + 1 - 6], batch["input"][rows, : 32 + 1 - 6])
    assert torch.equal(out["target"][rows, : 32 - 6], batch["target"][rows, : 32 - 6])
    assert (out["target"][rows, 32 - 6 :] == IGNORE_INDEX).all()
    assert not out["input"].requires_grad and all(p.grad is None for p in student.parameters())
    assert OnPolicy(student, fraction=0.0)(batch)["input"] is batch["input"]
    with pytest.raises(ValueError, match="fraction"):
        OnPolicy(student, fraction=1.5)


class Uniform(torch.nn.Module):
    """A student that gives every token the same logit: sampling costs nothing."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.bias = vocab, torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return self.bias.expand(*ids.shape, self.vocab)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_the_on_policy_share_is_the_fraction_at_every_batch_size(fraction, batch_size):
    """Rounding λ·B never went on-policy at B = 1, λ = 0.5 (banker's rounding) nor at λ = 0.1
    for B ≤ 5, and gave 0.4 at B = 5, λ = 0.5. Over ~4,000 sequences the share is λ within
    4.5 standard deviations of a binomial draw (exactly λ where λ·B is whole)."""
    transform = OnPolicy(Uniform(7), fraction=fraction, continuation=1, seed=0)
    batches = 4000 // batch_size
    tokens = torch.zeros(batch_size, 6, dtype=torch.int64)
    batch = {"input": tokens, "target": tokens}
    for _ in range(batches):
        transform(batch)
    sequences = batches * batch_size
    whole = fraction * batch_size % 1 == 0
    tolerance = 0.0 if whole else 4.5 * math.sqrt(fraction * (1 - fraction) / sequences)
    assert abs(transform.replaced / sequences - fraction) <= tolerance + 1e-12


def test_on_policy_draws_are_reproducible_from_the_runs_seed(corpus):
    from kdistill.teaching.preparation import prepare_student

    student = tiny_gpt(corpus.num_classes)
    batch = next(iter(DataLoader(corpus.train, batch_size=5)))

    def transform(run_seed, **settings):
        params = {"on_policy": {"fraction": 0.3, "continuation": 4, **settings}}
        return prepare_student(params, student, student, seed=run_seed)

    def draws(transform):
        return torch.cat([transform(batch)["input"] for _ in range(6)])

    first, again = transform(7), transform(7)
    assert first.seed == 7 and torch.equal(draws(first), draws(again))
    assert not torch.equal(draws(transform(7)), draws(transform(8)))
    assert transform(7, seed=1).seed == 1  # the recipe's own on_policy.seed wins


def test_an_on_policy_warm_start_keeps_the_first_batches_off_policy_across_a_resume(corpus):
    student = tiny_gpt(corpus.num_classes)
    batch = next(iter(DataLoader(corpus.train, batch_size=4)))
    transform = OnPolicy(student, fraction=1.0, continuation=4, seed=0, after=2)
    for _ in range(2):  # the warm start: the data's batches as they are
        out = transform(batch)
        assert out["input"] is batch["input"] and out["metric/on_policy_generated"] == 0
    state = transform.state_dict()
    resumed = OnPolicy(student, fraction=1.0, continuation=4, seed=0, after=2)
    resumed.load_state_dict(state)
    for each in (transform, resumed):  # batch 3: on-policy, in the resumed run too
        out = each(batch)
        assert not torch.equal(out["input"], batch["input"])
        assert out["metric/on_policy_generated"] > 0
    with pytest.raises(ValueError, match="on_policy.after"):
        OnPolicy(student, after=-1)


class RecordingTeacher(Teacher):
    def __init__(self, module):
        super().__init__(module)
        self.inputs = []

    def __call__(self, batch):
        self.inputs.append(batch["input"].clone())
        return super().__call__(batch)


def test_fit_calls_the_batch_transform_before_the_teacher(corpus):
    torch.manual_seed(0)
    teacher = RecordingTeacher(tiny_gpt(corpus.num_classes, n_embd=32))
    student = tiny_gpt(corpus.num_classes)
    transform = OnPolicy(student, fraction=0.5, continuation=4, seed=0)
    terms = preset_terms("token_kd", loss="jsd", beta=0.5, alpha=0.5, temperature=1.0)
    loader = DataLoader(torch.utils.data.Subset(corpus.train, range(16)), batch_size=8)
    history = train_loop(
        Distiller(student, terms),
        loader,
        teacher=teacher,
        epochs=1,
        progress=False,
        loop=Loop(batch_transform=transform),
    )
    assert transform.replaced == 8 and len(teacher.inputs) == 2
    original = torch.cat([b["input"] for b in loader])
    seen = torch.cat(teacher.inputs)
    assert not torch.equal(seen, original)  # the teacher scored the sampled sequences
    assert math.isfinite(history[0]["loss/kd"]) and history[0]["loss/kd"] > 0


# configs/lm_kd.yaml at a test's size: 160 windows of 32 characters, one epoch each
QUICK = [
    "data.subset=160",
    "data.options.block_size=32",
    "teacher.kwargs={n_layer: 1, n_head: 2, n_embd: 32}",
    "student.kwargs={n_layer: 1, n_head: 2, n_embd: 16}",
    "teacher.epochs=1",
    "train.epochs=1",
    "output.latency=false",
    "output.plots=false",
]


@pytest.mark.integration
def test_lm_recipe_end_to_end_with_on_policy_and_samples(tmp_path):
    from kdistill.cli import main

    quick = [
        *QUICK,
        "distill.params={loss: jsd, beta: 0.5, on_policy: {fraction: 0.25, continuation: 4}}",
        "output.progress=false",
        f"output.dir={tmp_path}",
    ]
    assert main(["run", "configs/lm_kd.yaml", *quick]) == 0
    run_dir = tmp_path / "lm_kd"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"]["name"] == "language_modelling"
    for role in ("teacher", "scratch", "student"):
        assert 1.0 < summary[role]["perplexity"] < 200
    assert summary["teacher"]["params"] > summary["student"]["params"]
    assert len(summary["samples"]) == 3 and {"prompt", "teacher", "scratch", "student"} <= set(
        summary["samples"][0]
    )
    report = (run_dir / "report.md").read_text()
    assert "Generated samples" in report and "test perplexity" in report
