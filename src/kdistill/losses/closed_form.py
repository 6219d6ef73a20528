"""The forward KL, GKD's JSD and the token cross-entropy with their gradients with respect to the
logits in closed form, for the chunked pass (``kdistill.losses.chunked``).

Autograd through a softmax-based loss over a 49k vocabulary walks a dozen (chunk, V) tensors
forward and back (log-softmax, floors, gathers, scatters, products); the gradient itself is
one such tensor, known in closed form:

- forward KL, teacher p = softmax(t/T), student q = softmax(s/T), summed over positions:
  ∂/∂s = (q − p) / T (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
  Network", 2015, arXiv:1503.02531, eq. 2, without the T² that ``kd`` adds);
- the same over the k+1 buckets of a top-k teacher (the top-k tokens, then the tail), P = Σ_b p_b:
  ∂/∂s_v = (q_v·P − p_v) / T at a top-k token, q_v·(P − p_tail/q_tail) / T in the tail;
- the same from a ``SampledTeacher`` (drawn tokens with weights p̂, Ŵ = Σ p̂): its unbiased
  estimate (Ŵ·q − p̂) / T (``kdistill.losses.sparse.sampled_teacher``);
- cross-entropy with the next token y: ∂/∂s = softmax(s) − onehot(y);
- GKD's generalised JSD, β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β·p + (1 − β)·q, 0 < β < 1
  (Agarwal et al., ICLR 2024, arXiv:2306.13649), dense teacher: the β·KL(p ‖ m) part's
  derivative in q cancels the mixture's in the other, leaving ∂/∂q_v = (1 − β)·log(q_v / m_v) = g_v,
  so ∂/∂s = q·(g − Σ_v q_v·g_v) / T;
- the same from a ``SampledTeacher``: the unbiased estimate of ``sampled_jsd``, whose gradient
  is the sampled forward KL's with p̂ scaled by β·φ, β·(q·Σ p̂·φ − p̂·φ) / T.

Each returns the chunk's summed value and gradient, computed in place in one new (chunk, V)
buffer (two with dense teacher logits, whose softmax needs its own; four for JSD), or ``None``
where the closed form would lose what the generic loss keeps: a non-finite value (±inf logits,
a banned token, which the generic losses floor) or a student tail mass below ``TAIL_FLOOR``
(the generic loss takes the tail's log-mass in log space, exact far below float32's smallest
normal number). The caller then runs the generic loss under autograd, so values and gradients
are those of ``kdistill.losses.token`` and ``token_ce`` in every case (tests/test_closed_form.py
and tests/test_chunked_loss.py compare them in float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kdistill.losses.lm import IGNORE_INDEX, token_ce
from kdistill.losses.sparse import (
    SampledTeacher,
    SparseTeacher,
    check_sparse_teacher,
    sampled_jsd_terms,
)
from kdistill.losses.token import forward_kl, forward_kl_topk, jsd

__all__ = ["TAIL_FLOOR", "closed_form"]

# Below this student tail mass (summed in linear space) the bucket KL is left to the generic
# loss, whose log-space sum stays exact; the gradient's p_tail / q_tail stays below 1e30·p_tail.
TAIL_FLOOR = 1e-30


def _finite(value: Tensor) -> bool:
    return bool(torch.isfinite(value))


def _softmax(x: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(x) over the last dimension in one new buffer, and logsumexp(x) (N, 1)."""
    top = x.amax(-1, keepdim=True)
    probs = (x - top).exp_()
    total = probs.sum(-1, keepdim=True)
    return probs.div_(total), top.add_(total.log())


def _forward_kl_dense(s: Tensor, t: Tensor, temperature: float) -> tuple[Tensor, Tensor] | None:
    t = t.to(s.dtype)
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    q, lse_s = _softmax(s)
    p, lse_t = _softmax(t)
    # Σ_v p·(log p − log q) with log p = t − lse_t, log q = s − lse_s, without making either
    # log-probability: Σ p·t − Σ p·s + Σ_rows (lse_s − lse_t)·Σ_v p.
    flat_p = p.reshape(-1)
    value = (
        flat_p @ t.reshape(-1)
        - flat_p @ s.reshape(-1)
        + ((lse_s - lse_t) * p.sum(-1, keepdim=True)).sum()
    )
    if not _finite(value):
        return None
    grad = q.sub_(p)
    return value, grad if temperature == 1.0 else grad.div_(temperature)


def _forward_kl_buckets(
    s: Tensor, teacher: SparseTeacher, temperature: float
) -> tuple[Tensor, Tensor] | None:
    check_sparse_teacher(teacher, temperature, s.shape[-1])
    if temperature != 1.0:
        s = s / temperature
    indices = teacher.indices.long()
    log_p_top, log_p_tail = (x.to(s.dtype) for x in (teacher.log_probs, teacher.tail_log_prob))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    q = (s - lse).exp_()
    q_top = q.gather(-1, indices)
    q_tail = q.scatter_(-1, indices, 0.0).sum(-1)  # the tail's own terms: no 1 − Σ top cancellation
    if not bool(q_tail.min() > TAIL_FLOOR):
        return None
    floor = torch.finfo(s.dtype).min  # the generic loss's floors, where a teacher mass is 0
    log_q_top = (s.gather(-1, indices) - lse).clamp_min(floor)
    log_p_top, log_p_tail = log_p_top.clamp_min(floor), log_p_tail.clamp_min(floor)
    p_top, p_tail = log_p_top.exp(), log_p_tail.exp()
    value = (p_top * (log_p_top - log_q_top)).sum() + (p_tail * (log_p_tail - q_tail.log())).sum()
    if not _finite(value):
        return None
    mass = p_top.sum(-1) + p_tail  # Σ_b p_b, 1 up to rounding
    grad = q.mul_((mass - p_tail / q_tail)[:, None])
    grad.scatter_(-1, indices, q_top * mass[:, None] - p_top)
    return value, grad if temperature == 1.0 else grad.div_(temperature)


def _sampled_inputs(s: Tensor, teacher: SampledTeacher, temperature: float) -> tuple:
    """The logits at the loss's temperature, the teacher's drawn ids, weights and log p in their
    dtype, and the student's log-normaliser (N, 1)."""
    check_sparse_teacher(teacher, temperature, s.shape[-1])
    if temperature != 1.0:
        s = s / temperature
    weights, log_p = (x.to(s.dtype) for x in (teacher.weights, teacher.log_probs))
    return s, teacher.indices.long(), weights, log_p, torch.logsumexp(s, dim=-1, keepdim=True)


def _forward_kl_sampled(
    s: Tensor, teacher: SampledTeacher, temperature: float
) -> tuple[Tensor, Tensor] | None:
    s, indices, weights, log_p, lse = _sampled_inputs(s, teacher, temperature)
    # Σ p̂·(log p − log q) at the drawn tokens only; log q = s − lse is never made whole.
    value = (weights * (log_p - s.gather(-1, indices) + lse)).sum()
    if not _finite(value):
        return None  # a −inf logit at a drawn token: the generic loss floors it
    grad = (s - lse).exp_().mul_(weights.sum(-1, keepdim=True))
    grad.scatter_add_(-1, indices, -weights)
    return value, grad if temperature == 1.0 else grad.div_(temperature)


def _forward_kl(s: Tensor, teacher, params: dict) -> tuple[Tensor, Tensor] | None:
    temperature = params.get("temperature", 1.0)
    if not temperature > 0 or set(params) - {"temperature"}:
        return None  # the generic loss says what is wrong
    if isinstance(teacher, SparseTeacher):
        return _forward_kl_buckets(s, teacher, temperature)
    if isinstance(teacher, SampledTeacher):
        return _forward_kl_sampled(s, teacher, temperature)
    if not isinstance(teacher, Tensor) or teacher.shape != s.shape:
        return None
    return _forward_kl_dense(s, teacher.detach(), temperature)


def _jsd_sampled(
    s: Tensor, teacher: SampledTeacher, beta: float, temperature: float
) -> tuple[Tensor, Tensor] | None:
    s, indices, weights, log_p, lse = _sampled_inputs(s, teacher, temperature)
    term, phi = sampled_jsd_terms(s.gather(-1, indices) - lse, log_p, beta)
    rows = s.shape[0]
    value = -(1.0 - beta) * math.log1p(-beta) * rows + beta * (weights * term).sum()
    if not _finite(value):
        return None  # a −inf logit at a drawn token: the generic loss floors it
    pull = weights * phi * beta  # the sampled forward KL's p̂, scaled by β·φ
    grad = (s - lse).exp_().mul_(pull.sum(-1, keepdim=True))
    grad.scatter_add_(-1, indices, -pull)
    return value, grad if temperature == 1.0 else grad.div_(temperature)


def _jsd(s: Tensor, teacher, params: dict) -> tuple[Tensor, Tensor] | None:
    temperature, beta = params.get("temperature", 1.0), params.get("beta", 0.5)
    if set(params) - {"temperature", "beta"} or not (temperature > 0 and 0 <= beta < 1):
        return None  # β = 1 (the reverse KL), a bad setting: the generic loss
    if isinstance(teacher, SampledTeacher):
        if beta == 0.0:
            return _forward_kl_sampled(s, teacher, temperature)
        return _jsd_sampled(s, teacher, beta, temperature)
    if not (isinstance(teacher, Tensor) and teacher.shape == s.shape):
        return None  # a top-k teacher: the generic loss
    if beta == 0.0:
        return _forward_kl_dense(s, teacher.detach(), temperature)  # jsd's β = 0 end
    t = teacher.detach().to(s.dtype)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    p, q = log_p.exp(), log_q.exp()
    # log p − log m and log q − log m, each in its log-probabilities' buffer
    value = beta * (p * log_p.sub_(log_m)).sum() + (1 - beta) * (q * log_q.sub_(log_m)).sum()
    if not _finite(value):
        return None  # a banned token (−inf logit): the generic loss floors it
    g = log_q.mul_(1 - beta)
    grad = g.sub_((q * g).sum(-1, keepdim=True)).mul_(q)
    return value, grad if temperature == 1.0 else grad.div_(temperature)


def _token_ce(s: Tensor, target: Tensor, params: dict) -> tuple[Tensor, Tensor] | None:
    if set(params) - {"ignore_index"}:
        return None
    counted = target != params.get("ignore_index", IGNORE_INDEX)
    target = torch.where(counted, target, 0)[:, None]
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    value = torch.where(counted, (lse - s.gather(-1, target)).squeeze(-1), 0.0).sum()
    if not _finite(value):
        return None
    grad = (s - lse).exp_().scatter_add_(-1, target, torch.full_like(lse, -1.0))
    return value, grad.mul_(counted[:, None])


def closed_form(
    loss: Callable, logits: Tensor, teacher, target: Tensor | None, params: dict
) -> tuple[Tensor, Tensor] | None:
    """``loss`` summed over the rows of ``logits`` (N, V) and its gradient with respect to them,
    or ``None`` when ``loss`` has no closed form here or the generic loss must decide."""
    if loss is forward_kl or loss is forward_kl_topk:
        if loss is forward_kl_topk and not isinstance(teacher, SparseTeacher):
            return None
        return _forward_kl(logits, teacher, params)
    if loss is token_ce:
        return _token_ce(logits, target, params)
    if loss is jsd:
        return _jsd(logits, teacher, params)
    return None
