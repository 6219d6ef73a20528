"""Closed-form gradients of the chunked pass: the same value and gradient as autograd through
the generic losses (float64), handed back to autograd wherever floors or a tiny student tail
would make them differ, and really used by the chunked pass when they apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    chunked,
    forward_kl,
    forward_kl_topk,
    jsd,
    reverse_kl,
    token_ce,
    topk_teacher,
)
from kdistill.losses.closed_form import TAIL_FLOOR, closed_form

N, V = 6, 50


def generic(loss, logits, teacher, target, params):
    leaf = logits.detach().requires_grad_()
    if loss is token_ce:
        value = F.cross_entropy(leaf, torch.where(target != -100, target, 0), reduction="none")
        value = torch.where(target != -100, value, 0.0).sum()
    else:
        value = loss(leaf, teacher, reduction="sum", **params)
    return value.detach(), torch.autograd.grad(value, leaf)[0]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(1)
    return 3 * torch.randn(N, V, generator=g, dtype=torch.float64), 3 * torch.randn(
        N, V, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_forward_kl_with_dense_teacher_equals_autograd(logits, temperature):
    s, t = logits
    params = {"temperature": temperature}
    value, grad = closed_form(forward_kl, s, t, None, params)
    expected_value, expected_grad = generic(forward_kl, s, t, None, params)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        grad, (F.softmax(s / temperature, -1) - F.softmax(t / temperature, -1)) / temperature
    )


@pytest.mark.parametrize("loss", [forward_kl, forward_kl_topk])
@pytest.mark.parametrize("k, temperature", [(1, 1.0), (4, 2.0), (V - 1, 1.0)])
def test_forward_kl_with_a_top_k_teacher_equals_autograd(logits, loss, k, temperature):
    s, t = logits
    teacher = topk_teacher(t, k=k, temperature=temperature)
    params = {"temperature": temperature}
    value, grad = closed_form(loss, s, teacher, None, params)
    expected_value, expected_grad = generic(loss, s, teacher, None, params)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 0.1, 0.9, 0.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_with_dense_teacher_equals_autograd(logits, beta, temperature):
    s, t = logits
    params = {"beta": beta, "temperature": temperature}
    value, grad = closed_form(jsd, s, t, None, params)
    expected_value, expected_grad = generic(jsd, s, t, None, params)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "case", ["beta 1 (the reverse KL)", "banned student token", "banned teacher token", "top-k"]
)
def test_jsd_leaves_to_autograd_what_the_closed_form_cannot_keep(logits, case):
    s, t = logits
    params, teacher = {"beta": 0.5}, t
    if case.startswith("beta"):
        params = {"beta": 1.0}
    elif case == "banned student token":
        s = banned_student(s)
    elif case == "banned teacher token":
        teacher = banned_teacher(t)
    else:
        teacher = topk_teacher(t, k=4)
    assert closed_form(jsd, s, teacher, None, params) is None
    term = chunked.ChunkedTerm(jsd, params=params)
    coefficient = torch.tensor([1.0], dtype=torch.float64)
    value, grad = chunked._chunk_pass([term], coefficient, s, teacher, None, with_grad=True)
    expected_value, expected_grad = generic(jsd, s, teacher, None, params)
    torch.testing.assert_close(value[0], expected_value)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)


def test_token_ce_equals_autograd_and_skips_ignored_targets(logits):
    s, _ = logits
    target = torch.arange(N) % V
    target[2] = -100
    value, grad = closed_form(token_ce, s, None, target, {})
    expected_value, expected_grad = generic(token_ce, s, None, target, {})
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert grad[2].abs().max() == 0


def test_a_top_k_teacher_at_another_temperature_is_refused(logits):
    s, t = logits
    with pytest.raises(ValueError, match="temperature"):
        closed_form(
            forward_kl, s, topk_teacher(t, k=4, temperature=2.0), None, {"temperature": 1.0}
        )


def banned_student(s):
    s = s.clone()
    s[0, 3] = float("-inf")
    return s


def banned_teacher(t):
    t = t.clone()
    t[1, 5] = float("-inf")
    return t


def peaked_student(s, t):
    """The student's mass all but e^−200 on the teacher's top 4."""
    return torch.full_like(s, -200.0).scatter(-1, t.topk(4, dim=-1).indices, 0.0)


@pytest.mark.parametrize(
    "case", ["banned student token", "banned teacher token", "tiny student tail", "k = V"]
)
def test_where_floors_decide_the_generic_loss_does_and_the_chunked_pass_still_matches(logits, case):
    s, t = logits
    teacher = t
    if case == "banned student token":
        s = banned_student(s)
    elif case == "banned teacher token":
        teacher = banned_teacher(t)
    elif case == "tiny student tail":
        s, teacher = peaked_student(s, t), topk_teacher(t, k=4)
        # The student's tail mass, (V − 4)·e^−200, is below the floor but a finite log in the
        # generic loss's log-space sum.
        assert (V - 4) * torch.tensor(-200.0, dtype=torch.float64).exp() < TAIL_FLOOR
        assert torch.isfinite(forward_kl(s, teacher))
    else:
        teacher = topk_teacher(t, k=V)
    assert closed_form(forward_kl, s, teacher, None, {}) is None
    term, coefficient = chunked.ChunkedTerm(forward_kl), torch.tensor([1.0], dtype=torch.float64)
    value, grad = chunked._chunk_pass([term], coefficient, s, teacher, None, with_grad=True)
    expected_value, expected_grad = generic(forward_kl, s, teacher, None, {})
    torch.testing.assert_close(value[0], expected_value)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)


def test_the_chunked_pass_uses_the_closed_forms_and_autograd_only_for_the_rest(logits, monkeypatch):
    _, t = logits
    hidden = torch.randn(N, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, 7, dtype=torch.float64, requires_grad=True)
    generic_terms = []
    real = chunked._chunk_sum
    monkeypatch.setattr(
        chunked, "_chunk_sum", lambda term, *a: generic_terms.append(term.loss) or real(term, *a)
    )
    terms = [
        chunked.ChunkedTerm(forward_kl, 0.5),
        chunked.ChunkedTerm(token_ce, 0.25),
        chunked.ChunkedTerm(reverse_kl, 0.25),
    ]
    total, _ = chunked.chunked_token_losses(
        chunked.LazyLogits(hidden, weight, None), t, torch.arange(N), terms, chunk_size=4
    )
    total.backward()
    # one call per chunk, for the term without a closed form
    assert generic_terms == [reverse_kl, reverse_kl]
    logits_ = F.linear(hidden, weight)
    expected = (
        0.5 * forward_kl(logits_, t)
        + 0.25 * token_ce(logits_, torch.arange(N))
        + 0.25 * reverse_kl(logits_, t)
    )
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(hidden.grad, torch.autograd.grad(expected, hidden)[0])
