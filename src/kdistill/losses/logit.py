"""Logit distillation: losses between the student's and the teacher's class scores.

Every function takes the student first and the teacher second, as raw logits of shape (N, C),
and returns a 0-d tensor. The teacher is a constant: callers hand in teacher logits computed
without autograd, and nothing here needs their gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOGIT_LOSSES", "cross_entropy", "kd", "kl_batchmean", "upcast"]


def upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Half-precision inputs computed in float32: softmax of large logits overflows in fp16 and
    loses the small probabilities that carry dark knowledge in bf16."""
    return tuple(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in tensors)


def kl_batchmean(student_log_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL(teacher ‖ student) summed over classes and averaged over the batch.

    ``F.kl_div`` takes the *student* log-probabilities as ``input`` and the *teacher*
    probabilities as ``target``; swapping them silently computes the reverse KL. ``'batchmean'``
    divides by N only; ``'mean'`` would also divide by the number of classes.
    """
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def cross_entropy(
    s_logits: Tensor, target: Tensor, *, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy with the true labels, mean over the batch (the hard-label term).

    Args:
        s_logits: student logits, (N, C).
        target: class indices, (N,), int64.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    """
    (s_logits,) = upcast(s_logits)
    return F.cross_entropy(s_logits, target, label_smoothing=label_smoothing)


def kd(s_logits: Tensor, t_logits: Tensor, *, temperature: float = 4.0) -> Tensor:
    """Soft-target distillation: T² · KL(softmax(t/T) ‖ softmax(s/T)), batch mean.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
    Learning Workshop, arXiv:1503.02531. The T² keeps the gradient's magnitude independent of
    the temperature (the soft-target gradient scales as 1/T²), so the weight between this term
    and the cross-entropy means the same at every T. Matches RepDistiller ``DistillKL``,
    mdistiller ``kd_loss`` and torchdistill ``KDLoss`` bit for bit.

    Args:
        s_logits: student logits, (N, C).
        t_logits: teacher logits, (N, C); detached, so no gradient ever reaches the teacher.
        temperature: T > 0; higher softens both distributions.

    Returns:
        0-d tensor. Gradient w.r.t. ``s_logits``: (T/N) · (softmax(s/T) − softmax(t/T)).
    """
    s_logits, t_logits = upcast(s_logits, t_logits.detach())
    student_log_probs = F.log_softmax(s_logits / temperature, dim=-1)
    teacher_probs = F.softmax(t_logits / temperature, dim=-1)
    return kl_batchmean(student_log_probs, teacher_probs) * temperature**2


LOGIT_LOSSES = {
    "ce": cross_entropy,
    "kd": kd,
}
