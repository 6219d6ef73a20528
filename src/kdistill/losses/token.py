"""Token-level distillation for language models: divergences between the teacher's and the
student's next-token distributions at every counted position.

Conventions shared by every loss in this module:

- Student first, teacher second. Logits are (B, L, V) or (N, V) (any leading shape: the last
  dimension is the vocabulary, and student and teacher must share it). The teacher is detached.
- Teacher p = softmax(t / T), student q = softmax(s / T), and **no T² factor** (unlike ``kd``):
  the language-model papers (GKD, DistiLLM) define and tune these losses without it.
- ``mask`` has the leading shape, (B, L) or (N,); true or non-zero means the position counts (a
  0/1 mask is read as bool, not as a weight). Masked positions are replaced by zeros before any
  arithmetic, so garbage there (±inf, NaN, 1e30) changes neither the value nor the gradient, which
  is exactly zero at masked positions.
- ``reduction``: ``"mean"`` (default): sum over the vocabulary, mean over counted positions, and
  0 (not NaN) when no position counts. ``"sum"``: the sum over counted positions, for chunked or
  accumulated computation, where ``Σ_chunks loss(chunk, reduction="sum") / mask.sum()`` is the
  unchunked mean (also the right way to average tokens across gradient-accumulation steps or
  data-parallel ranks, whose per-batch means weight tokens unequally). ``"none"``: the value per
  position, leading shape, 0 at masked positions.
- Numerics: half precision is computed in float32; everything stays in log space (log_softmax,
  and logaddexp for the mixtures), so logits of ±1e4 and probabilities that underflow to 0 give
  finite values and gradients. A −inf logit (a banned token) is allowed: its log-probability is
  floored at the dtype's most negative finite number, so a token both models ban contributes 0;
  a token only the student bans makes KL(p‖q) huge (~1e38 in float32, standing for +inf).
- The teacher may be a ``SparseTeacher`` (top-k probabilities plus one tail bucket, see
  ``topk_teacher``) in every loss here: the divergence is then taken between the two
  (k+1)-bucket distributions. Coarsening can only lose information, so for each of these
  divergences (all f-divergences) the bucketed value is ≤ the dense one and equals it at k = V
  (up to summation order); ``forward_kl_topk`` states the exact gap for the forward KL. The
  ``SparseTeacher`` holds the teacher at one temperature; a loss at another one is refused.
- The teacher may be a ``SampledTeacher`` (tokens drawn from it with importance weights, see
  ``sampled_teacher``) in ``forward_kl`` and in ``jsd`` below β = 1, whose values and gradients
  it estimates without bias (``sampled_jsd`` says why JSD can be); the others need the
  teacher's probability at every token the student weighs, which draws from the teacher do not
  give, and refuse it (``SAMPLED_REFUSAL``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import kd, upcast
from kdistill.losses.sparse import (
    SampledTeacher,
    SparseTeacher,
    check_sparse_teacher,
    sampled_forward_kl,
    sampled_jsd,
    sampled_teacher,
    topk_teacher,
)

__all__ = [
    "TOKEN_LOSSES",
    "SampledTeacher",
    "SparseTeacher",
    "check_sparse_teacher",
    "forward_kl",
    "forward_kl_topk",
    "jsd",
    "kd_topk",
    "reverse_kl",
    "sampled_teacher",
    "skew_kl",
    "skew_reverse_kl",
    "topk_teacher",
    "tvd",
]

REDUCTIONS = ("mean", "sum", "none")
SAMPLED_REFUSAL = (
    "needs the teacher's probability at every token the student puts mass on, and tokens "
    "drawn from the teacher give it only at the drawn ones (no unbiased estimate); "
    "a sampled teacher serves forward_kl and jsd with beta < 1"
)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_weight(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _floored_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    if temperature != 1.0:  # a (…, V) copy saved for an LM vocabulary at the usual T = 1
        logits = logits / temperature
    # A −inf log-probability turns p·log p into 0·(−inf) = NaN and gives logaddexp a NaN
    # gradient; the most negative finite number keeps exp() at exactly 0 and every term finite.
    return F.log_softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).min)


def _as_bool_mask(mask: Tensor | None, leading_shape: torch.Size) -> Tensor | None:
    if mask is None:
        return None
    if mask.shape != leading_shape:
        # Broadcasting a (B, L) mask against (B*L,) positions would silently mean something else.
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' leading shape "
            f"{tuple(leading_shape)}"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _student_log_probs(
    s_logits: Tensor, mask: Tensor | None, temperature: float, reduction: str
) -> tuple[Tensor, Tensor | None]:
    """The student's log-probabilities, masked positions replaced by a harmless constant, and
    the boolean mask."""
    _check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = _as_bool_mask(mask, s_logits.shape[:-1])
    (s_logits,) = upcast(s_logits)
    if mask is not None:
        # torch.where, not multiplication: 0·NaN and 0·inf are NaN, and where() sends a zero
        # gradient to the positions it drops.
        s_logits = torch.where(mask[..., None], s_logits, 0.0)
    return _floored_log_softmax(s_logits, temperature), mask


def _log_probs(
    s_logits: Tensor,
    teacher: Tensor | SparseTeacher,
    mask: Tensor | None,
    temperature: float,
    reduction: str,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Student and teacher log-probabilities over the same support (V tokens, or k+1 buckets),
    with masked positions replaced by a harmless constant, and the boolean mask."""
    if isinstance(teacher, SampledTeacher):
        raise ValueError(f"this divergence {SAMPLED_REFUSAL}")
    log_q, mask = _student_log_probs(s_logits, mask, temperature, reduction)
    if isinstance(teacher, SparseTeacher):
        check_sparse_teacher(teacher, temperature, log_q.shape[-1])
        return *_bucket_log_probs(log_q, teacher, mask), mask
    if teacher.shape != log_q.shape:
        raise ValueError(
            f"student logits {tuple(log_q.shape)} and teacher logits {tuple(teacher.shape)} "
            "differ: token losses need the same positions and vocabulary"
        )
    (t_logits,) = upcast(teacher.detach())
    if mask is not None:
        t_logits = torch.where(mask[..., None], t_logits, 0.0)
    return log_q, _floored_log_softmax(t_logits.to(log_q.dtype), temperature), mask


def _bucket_log_probs(
    log_q: Tensor, teacher: SparseTeacher, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities of the k+1 buckets (top-k tokens, then the tail)."""
    indices, top_log_p, tail_log_p = (field.detach() for field in teacher)
    indices = indices.long()  # a cache stores them as int32
    leading = log_q.shape[:-1]
    shapes_fit = indices.shape[:-1] == leading == tail_log_p.shape
    if not shapes_fit or top_log_p.shape != indices.shape:
        raise ValueError(
            f"sparse teacher shapes indices {tuple(indices.shape)}, log_probs "
            f"{tuple(top_log_p.shape)}, tail {tuple(tail_log_p.shape)} do not fit student "
            f"logits {tuple(log_q.shape)}"
        )
    top_log_p, tail_log_p = (x.to(log_q.dtype) for x in (top_log_p, tail_log_p))
    if mask is not None:
        # Padding in a cache may hold any index (−100, say); gather would fail on it.
        indices = torch.where(mask[..., None], indices, 0)
        top_log_p = torch.where(mask[..., None], top_log_p, 0.0)
        tail_log_p = torch.where(mask, tail_log_p, 0.0)
    floor = torch.finfo(log_q.dtype).min
    student_top = log_q.gather(-1, indices)
    # The student's tail, 1 − Σ q(top-k), summed over the complement instead: exact when the
    # student puts nearly all its mass on the teacher's top-k, and finite (floored) at k = V.
    student_tail = torch.logsumexp(log_q.scatter(-1, indices, floor), dim=-1)
    log_q = torch.cat([student_top, student_tail[..., None]], dim=-1).clamp_min(floor)
    log_p = torch.cat([top_log_p, tail_log_p[..., None]], dim=-1).clamp_min(floor)
    return log_q, log_p


def _reduce(per_position: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    if mask is not None:
        per_position = torch.where(mask, per_position, 0.0)
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    # An all-masked batch (a chunk of padding) is 0, not 0/0.
    if mask is None:
        return total / max(per_position.numel(), 1)
    return total / mask.sum().clamp_min(1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) summed over the last dimension, from log-probabilities (floored, finite)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1 − w)·b) for 0 < w < 1, without leaving log space."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


# --- losses ----------------------------------------------------------------------------------


def forward_kl(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Forward KL(p ‖ q), teacher p, student q: mass-covering; word-level KD for sequences.

    Kim and Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947; the
    ``beta = 0`` end of GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649).

    Args:
        s_logits: student logits, (B, L, V) or (N, V).
        t_logits: teacher logits of the same shape (detached), or a ``SparseTeacher``.
        mask: (B, L) or (N,), bool or 0/1; true counts. ``None`` counts every position.
        temperature: T > 0, applied to both; no T² factor.
        reduction: ``"mean"`` over counted positions (0 if none), ``"sum"``, or ``"none"``.

    A ``SampledTeacher`` gives the unbiased estimate of ``sampled_teacher`` (value and gradient
    equal the dense ones in expectation over the draws).

    Returns:
        0-d tensor (``"none"``: the leading shape), float32 for half-precision inputs.
    """
    if isinstance(t_logits, SampledTeacher):
        log_q, mask = _student_log_probs(s_logits, mask, temperature, reduction)
        check_sparse_teacher(t_logits, temperature, log_q.shape[-1])
        return _reduce(sampled_forward_kl(log_q, t_logits, mask), mask, reduction)
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    return _reduce(_kl(log_p, log_q), mask, reduction)


def reverse_kl(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Reverse KL(q ‖ p), student q, teacher p: mode-seeking, the student need not cover
    every teacher mode.

    Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024,
    arXiv:2306.08543 (token-level form); the ``beta = 1`` end of GKD, arXiv:2306.13649.
    Arguments, shapes and reduction as ``forward_kl``.
    """
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    return _reduce(_kl(log_q, log_p), mask, reduction)


def jsd(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    beta: float = 0.5,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Generalised Jensen-Shannon divergence of GKD: β·KL(p ‖ M) + (1 − β)·KL(q ‖ M),
    M = β·p + (1 − β)·q, teacher p, student q.

    Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes", ICLR 2024, arXiv:2306.13649. The formula tends to 0 at both ends (≈ β·KL(p‖q)
    near β = 0, ≈ (1 − β)·KL(q‖p) near β = 1), so the ends are defined as the limits of the
    normalised divergence: β = 0 returns ``forward_kl`` and β = 1 ``reverse_kl`` exactly.
    The scale therefore jumps at the ends; β = 0.5 is the symmetric JSD (≤ log 2).
    ``jsd(s, t, beta=b) == jsd(t, s, beta=1 - b)``.

    A ``SampledTeacher`` gives the unbiased estimate of ``kdistill.losses.sparse.sampled_jsd``
    for β < 1; β = 1, the reverse KL, is refused with it.

    Args:
        beta: β in [0, 1], the teacher's weight in the mixture.
        Others as ``forward_kl``.
    """
    _check_weight("beta", beta)
    if isinstance(t_logits, SampledTeacher):
        if beta == 0.0:
            return forward_kl(
                s_logits, t_logits, mask=mask, temperature=temperature, reduction=reduction
            )
        if beta == 1.0:
            raise ValueError(f"jsd at beta = 1 (the reverse KL) {SAMPLED_REFUSAL}")
        log_q, mask = _student_log_probs(s_logits, mask, temperature, reduction)
        check_sparse_teacher(t_logits, temperature, log_q.shape[-1])
        return _reduce(sampled_jsd(log_q, t_logits, mask, beta), mask, reduction)
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    if beta == 0.0:
        per_position = _kl(log_p, log_q)
    elif beta == 1.0:
        per_position = _kl(log_q, log_p)
    else:
        log_m = _log_mixture(log_p, log_q, beta)
        per_position = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return _reduce(per_position, mask, reduction)


def skew_kl(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    alpha: float = 0.1,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Skew forward KL: KL(p ‖ α·p + (1 − α)·q), teacher p, student q.

    Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML
    2024, arXiv:2402.03898 (α = 0.1 there). Mixing a little of p into the student bounds the
    log-ratio by log(1/α), which keeps the gradient bounded where q ≪ p. α = 0 is
    ``forward_kl``; α = 1 is 0.

    Args:
        alpha: α in [0, 1], the teacher's share of the skewed student.
        Others as ``forward_kl``.
    """
    _check_weight("alpha", alpha)
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    if alpha == 0.0:
        log_m = log_q
    elif alpha == 1.0:
        log_m = log_p
    else:
        log_m = _log_mixture(log_p, log_q, alpha)
    return _reduce(_kl(log_p, log_m), mask, reduction)


def skew_reverse_kl(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    alpha: float = 0.1,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Skew reverse KL: KL(q ‖ α·q + (1 − α)·p), student q, teacher p.

    Ko et al., DistiLLM, ICML 2024, arXiv:2402.03898. α = 0 is ``reverse_kl``; α = 1 is 0.

    Args:
        alpha: α in [0, 1], the student's share of the skewed teacher.
        Others as ``forward_kl``.
    """
    _check_weight("alpha", alpha)
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    if alpha == 0.0:
        log_m = log_p
    elif alpha == 1.0:
        log_m = log_q
    else:
        log_m = _log_mixture(log_q, log_p, alpha)
    return _reduce(_kl(log_q, log_m), mask, reduction)


def tvd(
    s_logits: Tensor,
    t_logits: Tensor | SparseTeacher,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Total variation distance ½·Σ_v |p_v − q_v|, in [0, 1] per position.

    Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL
    2023, arXiv:2307.15190 (the TVD variant). Arguments, shapes and reduction as ``forward_kl``.
    """
    log_q, log_p, mask = _log_probs(s_logits, t_logits, mask, temperature, reduction)
    return _reduce(0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1), mask, reduction)


def forward_kl_topk(
    s_logits: Tensor,
    sparse_teacher: SparseTeacher,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Forward KL from a top-k teacher: KL over the k+1 buckets (the teacher's top-k tokens and
    the tail), the student's tail being 1 − Σ of its probabilities at the teacher's top-k ids.

    The same value as ``forward_kl(s_logits, sparse_teacher)``; this name takes only a
    ``SparseTeacher`` (built by ``topk_teacher`` with the same temperature), so a recipe says
    which teacher output it needs.

    Error against the dense loss, exactly (chain rule of KL): dense − top-k =
    P_tail · KL(p(·|tail) ‖ q(·|tail)) ≥ 0, where P_tail is the teacher's tail mass and p(·|tail),
    q(·|tail) the two distributions renormalised over the tail tokens. It is 0 at k = V and
    never grows with k. Measured (float64; reproduced by ``tests/test_losses_token.py``) on 64
    positions of a peaked teacher over V = 4096 tokens, logits −2·log(rank) (Zipf, exponent 2)
    in a random order per position, student = teacher logits + N(0, 1) noise, dense KL 0.265
    nats: relative gap (dense − top-k) / dense = 0.55 at k = 1, 0.12 at k = 8, 0.034 at k = 32,
    0.0086 at k = 128, 0.0019 at k = 512, 0.00028 at k = 2048 and 0 (1e-16) at k = V. The gap
    tracks the tail mass (here P_tail × 0.37–0.50 nats): choose k to cover the teacher's mass.

    Args:
        s_logits: student logits, (B, L, V) or (N, V).
        sparse_teacher: ``SparseTeacher`` with (B, L, k) / (N, k) fields.
        Others as ``forward_kl``; ``temperature`` softens the student only.
    """
    if not isinstance(sparse_teacher, SparseTeacher):
        raise TypeError(
            "forward_kl_topk takes a SparseTeacher (see topk_teacher); "
            f"got {type(sparse_teacher).__name__}. For dense teacher logits use forward_kl."
        )
    return forward_kl(
        s_logits, sparse_teacher, mask=mask, temperature=temperature, reduction=reduction
    )


def kd_topk(
    s_logits: Tensor, t_logits: Tensor | SparseTeacher, *, temperature: float = 4.0
) -> Tensor:
    """Hinton's ``kd`` against a top-k teacher: T² · KL over the k+1 buckets (the teacher's top-k
    classes and the tail), summed over the classes and divided by N as ``kd``'s batch mean.

    A top-k teacher cannot say how its tail mass spreads over the other classes; spreading it
    evenly (what a dense read-back would do) is exact at T = 1 only for the top k and wrong
    once the target is softened (C = 100, k = 10, T = 4: top-k mass 0.227 instead of 0.291,
    loss 3.54 instead of 1.11). The bucket form is exact for what is known, and falls short of
    the dense ``kd`` by exactly T² · P_tail · KL(p(·|tail) ‖ q(·|tail)) (``forward_kl_topk``).
    Dense teacher logits give ``kd`` itself.

    Args:
        s_logits: student logits, (N, C) (or (B, L, V): divided by B, as ``kd``).
        t_logits: a ``SparseTeacher`` made at ``temperature``, or dense teacher logits.
        temperature: T > 0.
    """
    if not isinstance(t_logits, SparseTeacher):
        return kd(s_logits, t_logits, temperature=temperature)
    total = forward_kl(s_logits, t_logits, temperature=temperature, reduction="sum")
    return temperature**2 * total / s_logits.shape[0]


TOKEN_LOSSES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
    "forward_kl_topk": forward_kl_topk,
}
