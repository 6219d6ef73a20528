"""Distillation across tokenizers: teacher and student predict different tokens of the same text.

The two sequences are aligned on byte offsets (``kdistill.data.alignment``): a *chunk* is a run
of teacher tokens and a run of student tokens covering the same bytes. Each loss compares, per
chunk, what the two models say about it, and is the mean over the chunks present on both sides
(0 when there are none):

- ``uld``: Universal Logit Distillation (Boizard et al., "Towards Cross-Tokenizer Distillation:
  the Universal Logit Distillation Loss for LLMs", TMLR 2025, arXiv:2402.12030): the L1
  distance between the two probability vectors sorted in decreasing order and zero-padded to
  one length, the closed form of their Wasserstein-1 distance when token identities are ignored.
- ``hybrid``: entries whose strings match exactly in both vocabularies compared token by token
  (a KL over the shared tokens, as GOLD in TRL does), the rest by ULD.
- ``projected``: every teacher token's probability moved onto the student token its string starts
  with (a vocabulary projection built offline from the two tokenizers, after X-Token,
  arXiv:2605.21699), then a forward KL at the first position of each chunk: unlike the
  exact-match KL it keeps the mass of tokens the student spells differently (multi-digit
  numerals, the teacher's longer words).
- ``alm``: the chunk's likelihood itself, as approximate likelihood matching does (Minixhofer,
  Vulić, Ponti, "Universal Cross-Tokenizer Distillation via Approximate Likelihood Matching",
  NeurIPS 2025, arXiv:2503.20083): a binary KL between the teacher's and the student's
  probability of the chunk.

The probability vector of a chunk spanning several tokens merges them by the chain rule, as
GOLD and ALM do: it is the model's next-token distribution at the chunk's first position, with
the entry of the token it actually starts with replaced by the probability of the whole chunk,
Π_j p(x_j | x_<j) over the chunk's tokens. A one-token chunk is the plain next-token
distribution. Softmax at ``temperature`` on both sides, no T² factor (as ``kdistill.losses.token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import upcast
from kdistill.losses.sparse import SparseTeacher, check_sparse_teacher

__all__ = [
    "CROSS_TOKENIZER_LOSSES",
    "AlignedTeacher",
    "alm",
    "hybrid",
    "merged_chunks",
    "projected",
    "uld",
]


@dataclass
class AlignedTeacher:
    """The teacher's side of a cross-tokenizer batch: what a cross-tokenizer loss reads.

    Attributes:
        logits: teacher next-token logits (B, L_T, V_T), or a ``SparseTeacher`` (top-k).
        target: (B, L_T) int64, the teacher token each position predicts.
        chunk: (B, L_T) int64, the chunk of that target token, -1 where unaligned.
        student_chunk: (B, L_S) int64, the same for the student's target tokens.
        target_log_prob: (B, L_T), the teacher's log-probability of ``target`` at temperature
            1; needed with a ``SparseTeacher`` (the target may lie outside its top k).
        shared: (V_T,) int64, the student id of each teacher token with the same string, -1
            for the others (``hybrid`` needs it).
        projection: (V_T,) int64, the student token each teacher token's string starts with,
            -1 for none (``projected`` needs it).
    """

    logits: Tensor | SparseTeacher
    target: Tensor
    chunk: Tensor
    student_chunk: Tensor
    target_log_prob: Tensor | None = None
    shared: Tensor | None = None
    projection: Tensor | None = None
    read_whole: ClassVar[bool] = True  # call_model hands it on as it is, not its .logits

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def to(self, device) -> AlignedTeacher:
        def move(x):
            return None if x is None else x.to(device)

        fields = (self.logits, self.target, self.chunk, self.student_chunk)
        extra = (self.target_log_prob, self.shared, self.projection)
        return AlignedTeacher(*map(move, fields), *map(move, extra))


def _chunk_index(chunk: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Flat (B·L,) chunk numbers unique over the batch (b·size + c; -1 unaligned) and validity."""
    offsets = torch.arange(chunk.shape[0], device=chunk.device)[:, None] * size
    flat = torch.where(chunk >= 0, chunk + offsets, -1).reshape(-1)
    return flat, flat >= 0


def _per_chunk(flat: Tensor, valid: Tensor, token_log_prob: Tensor, slots: int):
    """Each chunk's log-probability (the sum over its tokens), its first position, presence."""
    positions = torch.arange(len(flat), device=flat.device)
    span = token_log_prob.new_zeros(slots).index_add(0, flat[valid], token_log_prob[valid])
    first = torch.full((slots,), len(flat), device=flat.device)
    first = first.scatter_reduce(0, flat[valid], positions[valid], "amin")
    return span, first, first < len(flat)


def _log_softmax(logits: Tensor, temperature: float) -> Tensor:
    (logits,) = upcast(logits)
    if temperature != 1.0:  # a (…, V) pass and its backward saved at the usual T = 1
        logits = logits / temperature
    log_p = F.log_softmax(logits, dim=-1)
    return log_p.clamp_min(torch.finfo(log_p.dtype).min)  # a banned token: finite, exp() = 0


@dataclass
class _Chunks:
    """The chunks present on both sides (N of them), before their vectors are merged."""

    log_q: Tensor  # (B·L_S, V_S) student log-probabilities at every position
    rows: Tensor  # (N,) the position (row of log_q) where each chunk starts
    first_s: Tensor  # (N,) the student token each chunk starts with
    span_s: Tensor  # (N,) the student's log-probability of the chunk
    teacher: Tensor  # (N, V_T) teacher log-probabilities, or (N, k) top-k ones (sparse)
    teacher_ids: Tensor | None  # (N, k) their ids (sparse), None for dense logits
    first_t: Tensor
    span_t: Tensor


def _chunks(s_logits, teacher: AlignedTeacher, target, mask, temperature) -> _Chunks:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_chunk, teacher_chunk = teacher.student_chunk, teacher.chunk
    if student_chunk.shape != target.shape or teacher_chunk.shape != teacher.target.shape:
        raise ValueError(
            f"chunk ids {tuple(student_chunk.shape)} / {tuple(teacher_chunk.shape)} must have "
            f"the targets' shapes {tuple(target.shape)} / {tuple(teacher.target.shape)}"
        )
    size = int(max(student_chunk.max(), teacher_chunk.max(), 0)) + 1
    slots = size * len(target)

    log_q = _log_softmax(s_logits, temperature).reshape(-1, s_logits.shape[-1])
    s_flat, s_valid = _chunk_index(student_chunk, size)
    s_target = target.reshape(-1).clamp_min(0)
    s_token = log_q.gather(-1, s_target[:, None]).squeeze(-1)
    s_span, s_first, s_present = _per_chunk(s_flat, s_valid, s_token, slots)
    if mask is not None:  # a student position that does not count takes its chunk with it
        dropped = s_valid & ~mask.reshape(-1).bool()
        s_present[s_flat[dropped]] = False

    t_flat, t_valid = _chunk_index(teacher_chunk, size)
    t_target = teacher.target.reshape(-1).clamp_min(0)
    ids = None
    if isinstance(teacher.logits, SparseTeacher):
        check_sparse_teacher(teacher.logits, temperature, teacher.logits.vocab_size or -1)
        if teacher.target_log_prob is None:
            raise ValueError("a SparseTeacher needs target_log_prob (its targets' log-probs)")
        indices, log_p, _ = (f.detach() for f in teacher.logits)
        ids = indices.reshape(-1, indices.shape[-1]).long()
        log_p = log_p.reshape(len(ids), -1).to(log_q.dtype)
        # Taken at temperature 1: dividing by T is the tempered chain rule up to the per-token
        # normalisers, exact at the usual T = 1.
        t_token = teacher.target_log_prob.detach().reshape(-1).to(log_q.dtype) / temperature
    else:
        log_p = _log_softmax(teacher.logits.detach(), temperature)
        log_p = log_p.reshape(-1, log_p.shape[-1]).to(log_q.dtype)
        t_token = log_p.gather(-1, t_target[:, None]).squeeze(-1)
    t_span, t_first, t_present = _per_chunk(t_flat, t_valid, t_token, slots)

    both = torch.nonzero(s_present & t_present).squeeze(-1)
    s_rows, t_rows = s_first[both], t_first[both]
    return _Chunks(
        log_q,
        s_rows,
        s_target[s_rows],
        s_span[both],
        log_p[t_rows],
        None if ids is None else ids[t_rows],
        t_target[t_rows],
        t_span[both].clamp_max(0.0),
    )


def merged_chunks(
    s_logits: Tensor,
    teacher: AlignedTeacher,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
):
    """The chunks present on both sides, merged by the chain rule.

    Returns ``(student, teacher_values, teacher_ids)``: the student's merged log-probability
    vectors (N, V_S), the teacher's merged probabilities (N, V_T), or with a ``SparseTeacher``
    (N, k + 1) with their token ids (the top k, then the chunk's first token when it is not
    among them), and ``teacher_ids`` None for dense logits (the ids are 0..V_T − 1).
    """
    c = _chunks(s_logits, teacher, target, mask, temperature)
    student = c.log_q[c.rows].scatter(-1, c.first_s[:, None], c.span_s[:, None])
    return (student, *_teacher_merged(c))


def _teacher_merged(c: _Chunks) -> tuple[Tensor, Tensor | None]:
    """The teacher's merged chunk probabilities and their ids (None: dense, the columns)."""
    span_p = c.span_t.exp()[:, None]
    if c.teacher_ids is None:
        return c.teacher.exp().scatter(-1, c.first_t[:, None], span_p), None
    is_first = c.teacher_ids == c.first_t[:, None]
    values = torch.where(is_first, span_p, c.teacher.exp())
    # The chunk's first token as one more entry when it is not among the top k.
    extra = torch.where(is_first.any(-1, keepdim=True), 0.0, span_p)
    ids = torch.cat([c.teacher_ids, c.first_t[:, None]], -1)
    return torch.cat([values, extra], -1), ids


def _sorted_l1(s_probs: Tensor, t_probs: Tensor, top_k: int | None) -> Tensor:
    """Σ_i |sort↓(s)_i − sort↓(t)_i| with the shorter vector zero-padded, per row.

    The first K = min(V_S, V_T) sorted entries are paired; beyond them only the longer
    vector has entries, each compared with a padding zero: its remaining mass. ``top_k`` < K
    pairs fewer entries and adds both remainders: an upper bound, exact when either side's
    mass beyond ``top_k`` is 0."""
    k = min(s_probs.shape[-1], t_probs.shape[-1], top_k or s_probs.shape[-1] + t_probs.shape[-1])
    s_top, t_top = s_probs.topk(k, dim=-1).values, t_probs.topk(k, dim=-1).values
    rest = (s_probs.sum(-1) - s_top.sum(-1)) + (t_probs.sum(-1) - t_top.sum(-1))
    return (s_top - t_top).abs().sum(-1) + rest.clamp_min(0.0)


def _reduce(per_chunk: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_chunk
    if reduction == "sum":
        return per_chunk.sum()
    if reduction == "mean":
        return per_chunk.sum() / max(len(per_chunk), 1)
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def uld(
    s_logits: Tensor,
    teacher: AlignedTeacher,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Universal Logit Distillation per aligned chunk (Boizard et al. 2024, arXiv:2402.12030).

    ULD(p, q) = Σ_i |p_(i) − q_(i)|, with p_(1) ≥ p_(2) ≥ ... the teacher's merged chunk
    probabilities sorted, q_(i) the student's, the shorter vector padded with zeros. A
    ``SparseTeacher`` counts as zero beyond its top k (its tail mass bounds the error).

    Args:
        s_logits: student logits (B, L_S, V_S).
        teacher: ``AlignedTeacher`` (the alignment and the teacher's logits or top k).
        target: (B, L_S) int64, the student token each position predicts.
        mask: (B, L_S), true where a student position counts; a chunk counts when all its
            student positions do.
        temperature: T > 0 of both softmaxes, no T² factor.
        top_k: pair only the k largest entries of each side (cheaper; an upper bound, see
            ``_sorted_l1``); ``None`` pairs them all (exact).
        reduction: ``"mean"`` over chunks (0 if none), ``"sum"``, or ``"none"`` (per chunk).
    """
    if isinstance(teacher.logits, SparseTeacher):
        return _reduce(_sparse_uld(s_logits, teacher, target, mask, temperature, top_k), reduction)
    student, t_values, _ = merged_chunks(
        s_logits, teacher, target, mask=mask, temperature=temperature
    )
    return _reduce(_sorted_l1(student.exp(), t_values, top_k), reduction)


def _sparse_uld(s_logits, teacher: AlignedTeacher, target, mask, temperature, top_k):
    """``uld`` against a top-k teacher without a (chunks × V_S) copy of the student. Only K =
    min(k + 1, V_S, top_k) sorted entries pair with the teacher's; merging lowers one student
    entry, so the merged top K lie among the plain top K + 1 and the chunk's first token."""
    c = _chunks(s_logits, teacher, target, mask, temperature)
    t_values, _ = _teacher_merged(c)
    vocab = c.log_q.shape[-1]
    k = min(t_values.shape[-1], vocab, top_k or vocab)
    top_log_q, top_ids = c.log_q[c.rows].topk(min(k + 1, vocab), dim=-1)
    is_first = top_ids == c.first_s[:, None]
    candidates = torch.where(is_first, c.span_s[:, None], top_log_q).exp()
    extra = torch.where(is_first.any(-1, keepdim=True), 0.0, c.span_s.exp()[:, None])
    s_top = torch.cat([candidates, extra], -1).topk(k, dim=-1).values
    t_top = t_values.topk(k, dim=-1).values
    s_mass = 1.0 - c.log_q[c.rows, c.first_s].exp() + c.span_s.exp()
    rest = (s_mass - s_top.sum(-1)).clamp_min(0.0) + (t_values.sum(-1) - t_top.sum(-1))
    return (s_top - t_top).abs().sum(-1) + rest.clamp_min(0.0)


def hybrid(
    s_logits: Tensor,
    teacher: AlignedTeacher,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Exact-match KL over the shared vocabulary plus ULD over the rest, per aligned chunk.

    A GOLD-style hybrid (TRL's cross-tokenizer trainer; ULD from Boizard et al. 2024,
    arXiv:2402.12030): teacher token v and student token σ(v) with the same string are
    compared as Σ_v p_v log(p_v / q_σ(v)) − p_v + q_σ(v), the KL of unnormalised measures
    (Csiszár's I-divergence: ≥ 0, and the plain KL when every token is shared); the teacher's
    and the student's unshared entries by ``uld`` on their own. With one tokenizer on both sides
    every token is shared, every chunk is one token, and the value is ``forward_kl``'s.

    Args: as ``uld``; ``teacher.shared`` must map teacher ids to student ids (-1: none).
    """
    if teacher.shared is None:
        raise ValueError("hybrid needs teacher.shared: the student id of each teacher token")
    if isinstance(teacher.logits, SparseTeacher):
        return _reduce(
            _sparse_hybrid(s_logits, teacher, target, mask, temperature, top_k), reduction
        )
    log_student, t_values, _ = merged_chunks(
        s_logits, teacher, target, mask=mask, temperature=temperature
    )
    shared = teacher.shared.to(log_student.device)
    student = log_student.exp()
    student_shared = torch.zeros(student.shape[-1], dtype=torch.bool, device=student.device)
    student_shared[shared[shared >= 0]] = True
    on_shared = (shared >= 0)[None, :].expand_as(t_values)
    p = torch.where(on_shared, t_values, 0.0)
    log_q = log_student[:, shared.clamp_min(0)]
    kl = (torch.xlogy(p, p) - p * log_q - p).sum(-1) + (student * student_shared).sum(-1)
    rest = _sorted_l1(
        torch.where(student_shared, 0.0, student), torch.where(on_shared, 0.0, t_values), top_k
    )
    return _reduce(kl + rest, reduction)


def _sparse_hybrid(s_logits, teacher: AlignedTeacher, target, mask, temperature, top_k):
    """``hybrid`` against a top-k teacher without a (chunks × V_S) copy of the student: the
    KL reads the student at the teacher's k + 1 entries, the ULD its unshared columns only,
    and the shared mass is 1 − the unshared one (the merged first entry corrected)."""
    c = _chunks(s_logits, teacher, target, mask, temperature)
    t_values, t_ids = _teacher_merged(c)
    shared = teacher.shared.to(c.log_q.device)
    vocab = c.log_q.shape[-1]
    is_shared = torch.zeros(vocab, dtype=torch.bool, device=shared.device)
    is_shared[shared[shared >= 0]] = True
    unshared = torch.nonzero(~is_shared).squeeze(-1)
    column = torch.full((vocab,), -1, dtype=torch.int64, device=shared.device)
    column[unshared] = torch.arange(len(unshared), device=shared.device)
    span_s = c.span_s.exp()
    first_column = column[c.first_s]  # where the chunk's first student token sits, if unshared
    q_unshared = c.log_q[c.rows[:, None], unshared[None, :]].exp()
    plain_unshared = q_unshared.sum(-1)
    is_first = torch.arange(len(unshared), device=shared.device)[None, :] == first_column[:, None]
    q_unshared = torch.where(is_first, span_s[:, None], q_unshared)
    first_q = c.log_q[c.rows, c.first_s].exp()
    shared_mass = (1.0 - plain_unshared).clamp_min(0.0)
    shared_mass = shared_mass + torch.where(first_column >= 0, 0.0, span_s - first_q)
    to_student = shared[t_ids]
    on_shared = to_student >= 0
    log_q = c.log_q[c.rows[:, None], to_student.clamp_min(0)]
    log_q = torch.where(to_student == c.first_s[:, None], c.span_s[:, None], log_q)
    p = torch.where(on_shared, t_values, 0.0)
    kl = (torch.xlogy(p, p) - p * log_q - p).sum(-1) + shared_mass
    return kl + _sorted_l1(q_unshared, torch.where(on_shared, 0.0, t_values), top_k)


def alm(
    s_logits: Tensor,
    teacher: AlignedTeacher,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Chunk likelihood matching: the binary KL between the teacher's and the student's
    probability of each aligned chunk,
    KL(Bern(P_T) ‖ Bern(P_S)) = P_T log(P_T / P_S) + (1 − P_T) log((1 − P_T) / (1 − P_S)).

    After approximate likelihood matching (Minixhofer et al., NeurIPS 2025, arXiv:2503.20083),
    which matches the chunks' likelihoods with a binary divergence; their outer-chunk and
    debiasing refinements are not included. Reads only each chunk's probability, so a top-k
    teacher needs nothing but ``target_log_prob``.

    Args: as ``uld``.
    """
    c = _chunks(s_logits, teacher, target, mask, temperature)
    log_s, log_t = c.span_s, c.span_t
    tiny = torch.finfo(log_s.dtype).tiny
    # log(1 − P) from log P without cancellation; a chunk of probability 1 has an empty "no".
    log_not_s = torch.log(-torch.expm1(log_s.clamp_max(-1e-7)))
    not_t = -torch.expm1(log_t)
    per_chunk = log_t.exp() * (log_t - log_s) + torch.xlogy(not_t, not_t.clamp_min(tiny))
    per_chunk = per_chunk - not_t * log_not_s
    return _reduce(per_chunk, reduction)


def projected(
    s_logits: Tensor,
    teacher: AlignedTeacher,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Forward KL from the teacher's next-token distribution projected onto the student's
    vocabulary, at the first position of each aligned chunk.

    Both sides start a chunk at the same byte, so the teacher's next token and the student's
    next token both begin there. Teacher token v carries its probability to π(v), the student
    token its string starts with (``teacher.projection``; the same string where both
    vocabularies have it), so p̃_σ = Σ_{v: π(v) = σ} p_v, renormalised over the tokens that
    have a projection, and the loss is KL(p̃ ‖ q) = Σ_σ p̃_σ log(p̃_σ / q_σ) against the
    student's next-token distribution q there. A vocabulary projection built offline from the
    two tokenizers, after X-Token (arXiv:2605.21699), which moves the mass the exact match of
    ``hybrid`` leaves to ULD (multi-digit numerals, the teacher's longer words) onto the
    token the student would start with. With one tokenizer on both sides π is the identity,
    every chunk is one token, and the value is ``forward_kl``'s. A ``SparseTeacher`` projects
    its top k (the tail is dropped by the renormalisation).

    Args: as ``uld``; ``teacher.projection`` maps teacher ids to student ids (-1: none).
    """
    if teacher.projection is None:
        raise ValueError("projected needs teacher.projection: the student id of each teacher token")
    c = _chunks(s_logits, teacher, target, mask, temperature)
    projection = teacher.projection.to(c.log_q.device)
    ids = c.teacher_ids
    if ids is None:  # dense: every teacher column
        ids = torch.arange(c.teacher.shape[-1], device=c.log_q.device).expand_as(c.teacher)
    to_student = projection[ids]
    p = torch.where(to_student >= 0, c.teacher.exp(), 0.0)
    p_tilde = torch.zeros(len(p), c.log_q.shape[-1], dtype=p.dtype, device=p.device)
    p_tilde = p_tilde.scatter_add(-1, to_student.clamp_min(0), p)
    p_tilde = p_tilde / p_tilde.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    per_chunk = (torch.xlogy(p_tilde, p_tilde) - p_tilde * c.log_q[c.rows]).sum(-1)
    return _reduce(per_chunk, reduction)


CROSS_TOKENIZER_LOSSES = {"uld": uld, "hybrid": hybrid, "projected": projected, "alm": alm}
