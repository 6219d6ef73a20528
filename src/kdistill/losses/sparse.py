"""A teacher's distribution kept sparse: its k most probable classes (tokens) per position and
the mass of the rest, at the temperature it will be read at. What a top-k teacher cache stores
and a top-k loss reads; (…, k) instead of (…, V) is what makes a cached or remote teacher of a
large vocabulary affordable."""

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

    def to(self, device, *, non_blocking: bool = False) -> SparseTeacher:
        fields = (f.to(device, non_blocking=non_blocking) for f in self)
        return SparseTeacher(*fields, temperature=self.temperature, vocab_size=self.vocab_size)


def check_sparse_teacher(teacher: SparseTeacher, temperature: float, vocab_size: int) -> None:
    """Refuse a ``SparseTeacher`` taken at another temperature or over another vocabulary."""
    made_at = teacher.temperature
    if made_at is not None and not math.isclose(made_at, temperature, rel_tol=1e-6):
        raise ValueError(
            f"the top-k teacher holds the teacher's distribution at temperature {made_at:g}, "
            f"but the loss runs at temperature {temperature:g}: build it at {temperature:g} "
            "(topk_teacher(..., temperature=...), or a teacher cache made for this temperature)"
        )
    if teacher.vocab_size is not None and teacher.vocab_size != vocab_size:
        raise ValueError(
            f"the top-k teacher covers a vocabulary of {teacher.vocab_size} entries but the "
            f"student's logits have {vocab_size}: build both for the same vocabulary"
        )


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


# --- shared preparation ----------------------------------------------------------------------
