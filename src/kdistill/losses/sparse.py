"""A teacher's distribution kept sparse, at the temperature it will be read at: its k most
probable classes (tokens) per position and the mass of the rest (``topk_teacher``), or tokens
drawn from it with their importance weights (``sampled_teacher``). What a sparse teacher cache
stores and a sparse loss reads; (…, k) instead of (…, V) is what makes a cached or remote teacher
of a large vocabulary affordable."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import upcast


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _SparseFields(NamedTuple):
    indices: Tensor
    log_probs: Tensor
    tail_log_prob: Tensor


class SparseTeacher(_SparseFields):
    """The teacher's next-token distribution kept as its k most probable tokens plus a tail.

    Storing (…, k) instead of (…, V) is what makes a cached or remote teacher affordable for a
    large vocabulary (V = 32k–256k). A NamedTuple of tensors, so it slices field by field and a
    DataLoader's default collate stacks it.

    The distribution is the teacher's at one temperature, so it also records that temperature
    and the vocabulary size V it was taken over (``None``: unknown, unchecked; slicing or
    collating yields a plain three-field value). A loss at another temperature, or a student
    with another vocabulary, is refused with a ``ValueError``: the first would soften teacher
    and student differently, the second would gather the wrong (or no) token ids.

    Attributes:
        indices: (…, k) int64, vocabulary ids of the top-k tokens (most probable first).
        log_probs: (…, k), the teacher's log-probabilities at ``indices``.
        tail_log_prob: (…,), log of the teacher's mass on the other V − k tokens (−inf at k = V).
        temperature: the T of softmax(t / T) these are the log-probabilities of.
        vocab_size: V.
    """

    def __new__(
        cls,
        indices: Tensor,
        log_probs: Tensor,
        tail_log_prob: Tensor,
        *,
        temperature: float | None = None,
        vocab_size: int | None = None,
    ):
        self = super().__new__(cls, indices, log_probs, tail_log_prob)
        self.temperature, self.vocab_size = temperature, vocab_size
        return self

    @property
    def tail_mass(self) -> Tensor:
        return self.tail_log_prob.exp()

    @property
    def shape(self) -> torch.Size:
        """The shape of the dense logits this stands for, (…, V) (V as -1 when unknown)."""
        return torch.Size((*self.indices.shape[:-1], self.vocab_size or -1))

    def map(self, function) -> SparseTeacher:
        """``function`` applied to every field, temperature and V kept (slicing, moving)."""
        fields = (function(f) for f in self)
        return type(self)(*fields, temperature=self.temperature, vocab_size=self.vocab_size)

    def to(self, device, *, non_blocking: bool = False) -> SparseTeacher:
        return self.map(lambda f: f.to(device, non_blocking=non_blocking))


class _SampledFields(NamedTuple):
    indices: Tensor
    weights: Tensor
    log_probs: Tensor


class SampledTeacher(_SampledFields):
    """The teacher's next-token distribution as tokens drawn from it, with importance weights:
    an unbiased stand-in for the teacher in any expectation over its tokens (``sampled_teacher``
    says how and why). Fields, attributes and methods as ``SparseTeacher``'s.

    Attributes:
        indices: (…, K) int64, token ids; a token drawn more than once holds one slot with its
            whole weight, its other slots repeat the id with weight 0.
        weights: (…, K), p̂ at ``indices``: count / K · p / r (p the teacher, r the proposal
            the tokens were drawn from); Σ over the slots is 1 exactly when r = p.
        log_probs: (…, K), the teacher's log p at ``indices``.
        temperature: the T of p = softmax(t / T).
        vocab_size: V.
    """

    def __new__(
        cls,
        indices: Tensor,
        weights: Tensor,
        log_probs: Tensor,
        *,
        temperature: float | None = None,
        vocab_size: int | None = None,
    ):
        self = super().__new__(cls, indices, weights, log_probs)
        self.temperature, self.vocab_size = temperature, vocab_size
        return self

    shape = SparseTeacher.shape
    map = SparseTeacher.map
    to = SparseTeacher.to


SPARSE_TEACHERS = (SparseTeacher, SampledTeacher)


def check_sparse_teacher(
    teacher: SparseTeacher | SampledTeacher, temperature: float, vocab_size: int
) -> None:
    """Refuse a sparse teacher taken at another temperature or over another vocabulary."""
    made_at, (kind, builder) = teacher.temperature, _KINDS[type(teacher)]
    if made_at is not None and not math.isclose(made_at, temperature, rel_tol=1e-6):
        raise ValueError(
            f"the {kind} teacher holds the teacher's distribution at temperature {made_at:g}, "
            f"but the loss runs at temperature {temperature:g}: build it at {temperature:g} "
            f"({builder}(..., temperature=...), or a teacher cache made for this temperature)"
        )
    if teacher.vocab_size is not None and teacher.vocab_size != vocab_size:
        raise ValueError(
            f"the {kind} teacher covers a vocabulary of {teacher.vocab_size} entries but the "
            f"student's logits have {vocab_size}: build both for the same vocabulary"
        )


_KINDS = {SparseTeacher: ("top-k", "topk_teacher"), SampledTeacher: ("sampled", "sampled_teacher")}


@torch.no_grad()
def topk_teacher(t_logits: Tensor, k: int, *, temperature: float = 1.0) -> SparseTeacher:
    """Keep the teacher's top-k next-token probabilities and the mass of the rest.

    Args:
        t_logits: teacher logits, (…, V).
        k: tokens kept per position, 1 ≤ k ≤ V.
        temperature: T > 0 of the teacher's softmax. It is fixed here (and recorded): the
            losses' own ``temperature`` then softens only the student and must be the same.

    Returns:
        ``SparseTeacher`` with (…, k) indices and float32 (or float64) log-probabilities and the
        (…,) log tail mass, recording ``temperature`` and V.
    """
    vocab = t_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"topk_teacher: k must be in [1, {vocab}] (the vocabulary), got {k}")
    _check_temperature(temperature)
    (t_logits,) = upcast(t_logits.detach())
    log_p = F.log_softmax(t_logits / temperature, dim=-1)
    log_probs, indices = log_p.topk(k, dim=-1)
    # The tail as a logsumexp over the remaining tokens, not 1 − Σ top-k: that subtraction
    # cancels to 0 (or below) once the top-k hold all but ~1e-7 of the mass in float32, and a
    # zero teacher tail would hide a student that puts its mass there.
    tail_log_prob = torch.logsumexp(log_p.scatter(-1, indices, float("-inf")), dim=-1)
    return SparseTeacher(
        indices, log_probs, tail_log_prob, temperature=temperature, vocab_size=vocab
    )


@torch.no_grad()
def sampled_teacher(
    t_logits: Tensor,
    samples: int,
    *,
    temperature: float = 1.0,
    proposal_temperature: float = 1.0,
    top: int = 0,
    generator: torch.Generator | None = None,
) -> SampledTeacher:
    """Draw ``samples`` tokens per position from the teacher, with replacement, and keep each
    distinct token once with its importance weight: random-sampling KD.

    Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs",
    ACL 2025, arXiv:2503.16870. Caching the top-k probabilities is a biased estimate of the
    teacher (the student never learns how the tail is shaped); tokens drawn from it, weighted,
    are an unbiased one, and ~12 per position keep the student's quality.

    The estimator. Teacher p = softmax(t / T), student q = softmax(s / T), proposal
    r = softmax(t / (T·τ)) (τ = ``proposal_temperature``; r = p at τ = 1, flatter for τ > 1,
    reaching further into the tail). Draw x_1 … x_K ~ r independently and set, for every token v,

        p̂(v) = (1/K) · Σ_i 1[x_i = v] · p(v) / r(v),   so E[p̂(v)] = p(v) for every v.

    The forward KL per position is estimated by

        L̂(s) = Σ_v p̂(v) · (log p(v) − log q(v)),   a sum over the ≤ K distinct drawn tokens,

    with log q(v) = s_v / T − logsumexp(s / T): the student's normaliser from all its own
    logits, the teacher's side only at the drawn tokens. L̂ is linear in p̂, hence
    E[L̂] = Σ_v p(v)·(log p(v) − log q(v)) = KL(p ‖ q), and its gradient

        ∂L̂/∂s = (Ŵ·q − p̂) / T,   Ŵ = Σ_v p̂(v),   has E = (q − p) / T = ∂KL(p ‖ q)/∂s

    (E[Ŵ] = Σ_v p(v) = 1): unbiased in value and gradient, at every K ≥ 1 and every τ. At τ = 1
    the weights are count / K and Ŵ = 1 exactly: the student's full softmax against the
    empirical distribution of the draws. The same holds for any loss that is an expectation
    over the teacher's tokens; a divergence that needs p(v) where the student puts mass (the
    reverse KL, JSD, TVD) has no unbiased estimate from draws of p, and is refused.

    With ``top`` = k > 0 the k most probable tokens are kept exactly (p̂ = p there) and the K
    draws come from the rest only (r restricted to the other V − k tokens and renormalised), so
    E[p̂(v)] = p(v) still holds everywhere, and the head, where most of the mass and of the
    draws' variance sit, is no longer noisy (Rao-Blackwellising the head: a top-k cache with an
    unbiased tail instead of a tail bucket).

    Args:
        t_logits: teacher logits, (…, V).
        samples: K ≥ 1 draws per position.
        temperature: T > 0 of the teacher's softmax, fixed here and recorded as in
            ``topk_teacher``.
        proposal_temperature: τ > 0 of the distribution the tokens are drawn from.
        top: k ≥ 0 most probable tokens kept exactly, 0 ≤ k < V (the first k slots).
        generator: the random source (a seeded ``torch.Generator`` on ``t_logits``'s device
            makes the draws reproducible).

    Returns:
        ``SampledTeacher`` with (…, k + K) ids (the top k, then the drawn ones ascending),
        weights p̂ and log p, recording T and V.
    """
    vocab = t_logits.shape[-1]
    if samples < 1:
        raise ValueError(f"sampled_teacher: samples must be at least 1, got {samples}")
    if not 0 <= top < vocab:
        raise ValueError(f"sampled_teacher: top must be in [0, {vocab - 1}], got {top}")
    _check_temperature(temperature)
    _check_temperature(proposal_temperature)
    (t_logits,) = upcast(t_logits.detach())
    log_p = F.log_softmax(t_logits / temperature, dim=-1)
    log_r = log_p
    if proposal_temperature != 1.0 or top:
        proposal = t_logits / (temperature * proposal_temperature)
        if top:  # the head is kept exactly: the draws come from the rest
            head = log_p.topk(top, dim=-1).indices
            proposal = proposal.scatter(-1, head, float("-inf"))
        log_r = F.log_softmax(proposal, dim=-1)
    drawn = torch.multinomial(
        log_r.reshape(-1, vocab).exp(), samples, replacement=True, generator=generator
    )
    drawn = drawn.reshape(*t_logits.shape[:-1], samples).sort(dim=-1).values
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[..., 1:] = drawn[..., 1:] != drawn[..., :-1]
    counts = (drawn[..., :, None] == drawn[..., None, :]).sum(-1)  # (…, K, K): K is small
    log_p_drawn = log_p.gather(-1, drawn)
    ratio = (log_p_drawn - log_r.gather(-1, drawn)).exp()  # exactly 1 at τ = 1
    weights = torch.where(first, counts.to(ratio.dtype) / samples * ratio, 0.0)
    if top:
        drawn = torch.cat([head, drawn], dim=-1)
        log_p_drawn = torch.cat([log_p.gather(-1, head), log_p_drawn], dim=-1)
        weights = torch.cat([log_p_drawn[..., :top].exp(), weights], dim=-1)
    return SampledTeacher(drawn, weights, log_p_drawn, temperature=temperature, vocab_size=vocab)


def _drawn(
    log_q: Tensor, teacher: SampledTeacher, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """A sampled teacher's ids, weights p̂ and log p, checked against the student's (…, V)
    log-probabilities, in their dtype, and zeroed where ``mask`` is false."""
    indices, weights, log_p = (field.detach() for field in teacher)
    indices = indices.long()  # a cache stores them as int32
    if indices.shape[:-1] != log_q.shape[:-1] or weights.shape != indices.shape:
        raise ValueError(
            f"sampled teacher shapes indices {tuple(indices.shape)}, weights "
            f"{tuple(weights.shape)} do not fit student logits {tuple(log_q.shape)}"
        )
    weights, log_p = weights.to(log_q.dtype), log_p.to(log_q.dtype)
    if mask is not None:  # padding in a cache may hold any index
        indices = torch.where(mask[..., None], indices, 0)
        weights = torch.where(mask[..., None], weights, 0.0)
        log_p = torch.where(mask[..., None], log_p, 0.0)
    return indices, weights, log_p


def sampled_forward_kl(log_q: Tensor, teacher: SampledTeacher, mask: Tensor | None) -> Tensor:
    """L̂ = Σ_slots p̂ · (log p − log q) per position (``sampled_teacher``'s estimator of the
    forward KL), from the student's log-probabilities ``log_q`` (…, V); 0 where ``mask`` is
    false."""
    indices, weights, log_p = _drawn(log_q, teacher, mask)
    floor = torch.finfo(log_q.dtype).min
    gap = log_p.clamp_min(floor) - log_q.gather(-1, indices)
    return (weights * gap).sum(-1)


def jsd_tail_weight(x: Tensor) -> Tensor:
    """φ(x) = log(1 + eˣ) / eˣ, in (0, 1], for ``sampled_jsd``: 1 where the student outweighs the
    teacher (x → −∞), → 0 where the teacher outweighs the student (x → +∞)."""
    # Below −20, φ = 1 − eˣ/2 to within e²ˣ < 1e-17, and e⁻ˣ would overflow float32 below −88.
    small = x < -20.0
    safe = torch.where(small, 0.0, x)
    series = 1.0 - 0.5 * x.clamp_max(-20.0).exp()
    return torch.where(small, series, F.softplus(safe) * (-safe).exp())


def sampled_jsd_terms(log_q_drawn: Tensor, log_p: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Per slot, for ``sampled_jsd``: the value's term −log β − softplus(−x) − φ(x) and φ(x),
    x = log(β / (1 − β)) + log p − log q."""
    x = math.log(beta / (1.0 - beta)) + log_p - log_q_drawn
    phi = jsd_tail_weight(x)
    return -math.log(beta) - F.softplus(-x) - phi, phi


def sampled_jsd(log_q: Tensor, teacher: SampledTeacher, mask: Tensor | None, beta: float) -> Tensor:
    """An unbiased estimate of GKD's generalised JSD, β·KL(p ‖ m) + (1 − β)·KL(q ‖ m),
    m = β·p + (1 − β)·q, 0 < β < 1 (Agarwal et al., ICLR 2024, arXiv:2306.13649), from tokens
    drawn from the teacher (``sampled_teacher``), per position; 0 where ``mask`` is false.

    The first part is an expectation over the teacher's tokens. The second weighs tokens by the
    student, but it saturates where the teacher has no mass: with c = β / (1 − β),

        log(q / m) = −log(1 − β) − log(1 + c·p / q),   so
        KL(q ‖ m) = −log(1 − β) − Σ_v g(v),   g = q·log(1 + c·p / q),   since Σ_v q = 1,

    and 0 ≤ g ≤ c·p: g vanishes where p does, and Σ_v g = Σ_v p·(g / p) is an expectation over
    the teacher's tokens too, of an integrand bounded in [0, c]. With x = log c + log p − log q,
    log(p / m) = −log β − softplus(−x) and (1 − β)·g / p = β·φ(x), φ(x) = log(1 + eˣ) / eˣ:

        Ĵ = −(1 − β)·log(1 − β) + β·Σ_slots p̂·(−log β − softplus(−x) − φ(x)),

    linear in p̂, so E[Ĵ] = JSD; its gradient ∂Ĵ/∂s = β·(q·Σ p̂·φ − p̂·φ) / T (the sampled forward
    KL's (Ŵ·q − p̂) / T with p̂ scaled by β·φ) is unbiased as well. Reverse KL (β = 1) has no
    such form: its integrand q·log(q / p) is unbounded where p is small."""
    indices, weights, log_p = _drawn(log_q, teacher, mask)
    floor = torch.finfo(log_q.dtype).min
    term, _ = sampled_jsd_terms(log_q.gather(-1, indices), log_p.clamp_min(floor), beta)
    value = -(1.0 - beta) * math.log1p(-beta) + beta * (weights * term).sum(-1)
    return value if mask is None else torch.where(mask, value, 0.0)
