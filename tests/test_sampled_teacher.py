"""Random-sampling KD (Anshumann et al., ACL 2025, arXiv:2503.16870): tokens drawn from the
teacher with importance weights estimate the forward KL and GKD's JSD (below β = 1) and their
gradients without bias; a cache of them records what it holds and is refused for another
signal; divergences the draws cannot estimate are refused with the reason."""

import functools
import itertools
import json

import pytest
import torch
from test_cache import FINGERPRINT, QUICK, setup  # noqa: F401 (the module's fixture)

from kdistill.losses import (
    SampledTeacher,
    chunked_token_loss,
    forward_kl,
    jsd,
    reverse_kl,
    sampled_teacher,
    topk_teacher,
    tvd,
)
from kdistill.teachers.cache import CacheMismatchError, build_cache, open_or_build

VOCAB, POSITIONS = 16, 3


def teacher_and_student(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(POSITIONS, VOCAB, generator=g, dtype=torch.float64) * 2.0
    s = torch.randn(POSITIONS, VOCAB, generator=g, dtype=torch.float64)
    return t, s


def draws(t, count, samples, proposal_temperature, temperature=1.0, seed=0, top=0):
    """``count`` independent sampled teachers of ``t``, stacked on a leading dimension."""
    return sampled_teacher(
        t.expand(count, *t.shape),
        samples,
        temperature=temperature,
        proposal_temperature=proposal_temperature,
        top=top,
        generator=torch.Generator().manual_seed(seed),
    )


def assert_mean_is(per_draw, expected, sigmas=5.0):
    """The mean over draws (dim 0) equals ``expected`` within ``sigmas`` standard errors."""
    count = per_draw.shape[0]
    error = (per_draw.mean(0) - expected).abs()
    standard_error = per_draw.std(0) / count**0.5
    assert (error <= sigmas * standard_error + 1e-12).all(), (error / standard_error).max()


# The losses a sampled teacher estimates: the forward KL, and JSD below β = 1 (sampled_jsd).
ESTIMATED = {
    "forward_kl": forward_kl,
    "jsd_0.5": functools.partial(jsd, beta=0.5),
    "jsd_0.1": functools.partial(jsd, beta=0.1),
    "jsd_0.9": functools.partial(jsd, beta=0.9),
}


@pytest.mark.parametrize("loss", ESTIMATED.values(), ids=ESTIMATED.keys())
@pytest.mark.parametrize("proposal_temperature", [0.5, 1.0, 3.0])
def test_expectation_over_every_possible_draw_is_the_dense_loss(
    proposal_temperature, loss, monkeypatch
):
    """Exactly: every one of the V^K ordered draws, weighted by its probability under the
    proposal, gives the dense loss and its gradient (a sharpened proposal too, whose rare
    tokens a sample average would almost never see)."""
    vocab, samples, temperature = 4, 3, 1.5
    t, s = teacher_and_student(7)
    t, s = t[:2, :vocab], s[:2, :vocab].clone().requires_grad_()
    tuples = torch.tensor(list(itertools.product(range(vocab), repeat=samples)))
    count = len(tuples)
    # the draws of position p in copy i are tuples[i]: multinomial sees (copy, position) rows
    monkeypatch.setattr(torch, "multinomial", lambda r, k, **_: tuples.repeat_interleave(2, 0))
    sampled = draws(t, count, samples, proposal_temperature, temperature)
    log_r = torch.log_softmax(t / (temperature * proposal_temperature), -1)
    chance = log_r[torch.arange(2), tuples[:, :, None]].sum(1).exp()  # (count, position)
    assert chance.sum(0).sub(1).abs().max() < 1e-12
    many = s.expand(count, *s.shape)
    values = loss(many, sampled, temperature=temperature, reduction="none")
    expected_value = (chance * values).sum(0)
    (expected_grad,) = torch.autograd.grad(expected_value.sum(), s)
    dense = loss(s, t, temperature=temperature, reduction="none")
    (dense_grad,) = torch.autograd.grad(dense.sum(), s)
    torch.testing.assert_close(expected_value, dense.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(expected_grad, dense_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ESTIMATED.values(), ids=ESTIMATED.keys())
@pytest.mark.parametrize("top", [0, 3])
@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gradient_and_value_are_unbiased(proposal_temperature, temperature, top, loss):
    t, s = teacher_and_student()
    s = s.requires_grad_()
    dense = loss(s, t, temperature=temperature, reduction="none")
    (dense_grad,) = torch.autograd.grad(dense.sum(), s)
    count = 20000
    sampled = draws(t, count, 4, proposal_temperature, temperature, top=top)
    if top:  # the head exactly, every draw from the rest
        head = torch.log_softmax(t / temperature, -1).topk(top, -1)
        assert (sampled.indices[..., :top] == head.indices).all()
        torch.testing.assert_close(
            sampled.weights[..., :top], head.values.exp().expand(count, -1, -1)
        )
        assert not (sampled.indices[..., top:, None] == head.indices[:, None, :]).any()
    many = s.expand(count, *s.shape)
    values = loss(many, sampled, temperature=temperature, reduction="none")
    (grads,) = torch.autograd.grad(values.sum(), many, is_grads_batched=False)
    assert_mean_is(values.detach(), dense.detach())
    assert_mean_is(grads, dense_grad)
    # Not vacuous: one draw is far from the dense gradient, a top-k teacher is biased.
    assert (grads[0] - dense_grad).abs().max() > 0.05 * dense_grad.abs().max()
    topk = loss(s, topk_teacher(t, 4, temperature=temperature), temperature=temperature)
    (topk_grad,) = torch.autograd.grad(topk, s)
    assert (topk_grad * POSITIONS - dense_grad).abs().max() > 10 * (grads.std(0) / count**0.5).max()


def test_weights_are_counts_at_the_teachers_own_temperature():
    t, _ = teacher_and_student(1)
    sampled = draws(t, 50, 8, 1.0)
    # each distinct token once, with count / K; repeats hold weight 0; Σ = 1 exactly
    assert torch.equal(sampled.weights.sum(-1), torch.ones(50, POSITIONS, dtype=torch.float64))
    assert ((sampled.weights * 8).round() == sampled.weights * 8).all()
    repeats = sampled.indices[..., 1:] == sampled.indices[..., :-1]
    assert repeats.any() and (sampled.weights[..., 1:][repeats] == 0).all()
    log_p = torch.log_softmax(t, -1).expand(50, -1, -1)
    torch.testing.assert_close(sampled.log_probs, log_p.gather(-1, sampled.indices))


def test_draws_are_reproducible_under_a_seed():
    t, _ = teacher_and_student(2)
    first, again, other = (draws(t, 10, 6, 1.5, seed=seed) for seed in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.indices, other.indices)


@pytest.mark.parametrize("loss", ESTIMATED.values(), ids=ESTIMATED.keys())
@pytest.mark.parametrize("top", [0, 2])
def test_chunked_closed_form_equals_autograd_of_the_estimator(loss, top, monkeypatch):
    """The chunked pass's closed forms (losses.closed_form) give the value and gradients of the
    generic estimator under autograd, and are the ones used (autograd is never called)."""
    import kdistill.losses.chunked as chunked_module

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.randn(VOCAB, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, VOCAB, generator=g, dtype=torch.float64)
    sampled = sampled_teacher(t, 6, temperature=2.0, proposal_temperature=1.5, top=top, generator=g)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    base = getattr(loss, "func", loss)
    params = {"temperature": 2.0, **getattr(loss, "keywords", {})}
    closed = chunked_module.closed_form
    used = []
    monkeypatch.setattr(
        chunked_module, "closed_form", lambda *args: used.append(closed(*args)) or used[-1]
    )
    chunked = chunked_token_loss(base, hidden, head, sampled, mask=mask, chunk_size=3, **params)
    assert used and all(result is not None for result in used)
    whole = base(hidden @ head.T, sampled, mask=mask, **params)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(chunked, (hidden, head)), torch.autograd.grad(whole, (hidden, head))
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", [reverse_kl, functools.partial(jsd, beta=1.0), tvd])
def test_divergences_the_draws_cannot_estimate_are_refused(loss):
    t, s = teacher_and_student(6)
    with pytest.raises(ValueError, match="every token the student puts mass on"):
        loss(s, sampled_teacher(t, 4))
    with pytest.raises(ValueError, match="temperature 1, but the loss runs at temperature 2"):
        forward_kl(s, sampled_teacher(t, 4), temperature=2.0)


# --- the cache --------------------------------------------------------------------------------


def read_top3(live):
    return live.topk(3, dim=-1).indices


def test_sampled_cache_holds_the_draws_and_refuses_another_signal(setup, tmp_path):  # noqa: F811
    splits, teacher, _, _ = setup
    settings = {"fingerprint": FINGERPRINT, "dtype": "float32", "samples": 5}
    settings |= {"temperature": 2.0, "proposal_temperature": 1.5, "seed": 7}
    cache = build_cache(tmp_path / "a", teacher, splits.train, batch_size=64, **settings)
    # the draws are seeded per sample: another batch size gives the same cache
    again = build_cache(tmp_path / "b", teacher, splits.train, batch_size=9, **settings)
    assert {"sampled.index", "sampled.weight", "sampled.log_prob"} == set(cache.arrays) - {
        "feature.stages.1"
    }
    for name, array in cache.arrays.items():
        assert (array == again.arrays[name]).all(), name
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["signal"] == {
        "kind": "sampled",
        "samples": 5,
        "temperature": 2.0,
        "proposal_temperature": 1.5,
        "seed": 7,
        "classes": 10,
    }
    index = torch.arange(12)
    read = cache.lookup(index).logits
    assert isinstance(read, SampledTeacher) and read.temperature == 2.0 and read.vocab_size == 10
    live = teacher({"input": splits.train.inputs[index], "index": index}).logits
    log_p = torch.log_softmax(live / 2.0, -1).gather(-1, read.indices.long())
    torch.testing.assert_close(read.log_probs, log_p, rtol=1e-5, atol=1e-5)
    opened, built = open_or_build(tmp_path / "a", teacher, splits.train, **settings)
    assert not built and opened.signal == meta["signal"]
    hybrid = {**settings, "topk": 3}
    held = build_cache(tmp_path / "h", teacher, splits.train, **hybrid).lookup(index).logits
    assert held.indices.shape[-1] == 3 + 5 and (held.indices[..., :3] == read_top3(live)).all()
    others = ({"samples": 6}, {"seed": 8}, {"samples": None, "topk": 5}, {"samples": None})
    for other in (*others, {"topk": 3}):
        with pytest.raises(CacheMismatchError, match="the teacher cache holds sampled teacher"):
            open_or_build(tmp_path / "a", teacher, splits.train, **{**settings, **other})


@pytest.mark.parametrize("params", ["{loss: forward_kl}", "{loss: jsd, beta: 0.5}"])
def test_recipe_with_cache_samples_builds_a_sampled_cache(params, tmp_path):
    from kdistill.cli import main

    args = ["run", *QUICK, "teacher.cache=true", "teacher.cache_samples=3", "method=token_kd"]
    args.append(f"distill.params={params}")
    assert main([*args, f"output.dir={tmp_path}"]) == 0
    meta = json.loads((next((tmp_path / ".cache").iterdir()) / "meta.json").read_text())
    assert meta["signal"]["kind"] == "sampled" and meta["signal"]["samples"] == 3
    assert meta["fingerprint"]["sampled"]["samples"] == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["teacher.cache_samples=3"],  # the default method, kd, is not an expectation
            "teacher.cache_samples=3: term 'kd' (kd) needs the teacher's probability at every",
        ),
        (
            ["teacher.cache_samples=3", "method=token_kd", "distill.params={loss: jsd, beta: 1}"],
            "(jsd) needs the teacher's probability at every token the student puts mass on",
        ),
    ],
)
def test_recipe_refuses_what_a_sampled_cache_cannot_serve(overrides, message, tmp_path, capsys):
    from kdistill.cli import main

    code = main(["run", *QUICK, "teacher.cache=true", *overrides, f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_the_jsd_tail_weight_is_finite_and_exact_at_every_scale():
    """φ(x) = log(1 + eˣ) / eˣ where x spans float32's range: the log-ratio of two floored
    log-probabilities. Exact against float64 where float64 can say it, finite everywhere, and
    its gradient finite too (where() hands the unused branch no inf)."""
    from kdistill.losses.sparse import jsd_tail_weight

    x = torch.tensor([-1e30, -200.0, -88.0, -20.5, -20.0, -19.5, -1.0, 0.0, 3.0, 80.0, 1e30])
    x = x.requires_grad_()
    phi = jsd_tail_weight(x)
    (grad,) = torch.autograd.grad(phi.sum(), x)
    assert torch.isfinite(phi).all() and torch.isfinite(grad).all()
    assert ((phi > 0) | (x.detach() > 80)).all() and (phi <= 1).all()
    wide = x.detach().double()[2:-1]
    reference = torch.log1p(wide.exp()) / wide.exp()
    torch.testing.assert_close(phi.detach()[2:-1].double(), reference, rtol=1e-6, atol=1e-30)
    assert phi[0] == 1.0 and phi[-1] == 0.0
