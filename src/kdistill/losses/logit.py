"""Logit distillation: losses between the student's and the teacher's class scores.

Every function takes the student first and the teacher second, as raw logits of shape (N, C),
and returns a 0-d tensor. The teacher is a constant: every loss detaches the teacher logits, so
no gradient reaches the teacher even when the caller's tensor requires one. Half-precision inputs
are computed in float32 (``upcast``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOGIT_LOSSES",
    "cross_entropy",
    "dist",
    "dkd",
    "float32_math",
    "kd",
    "kl_batchmean",
    "nkd",
    "standardize_logits",
    "upcast",
]


def upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Half-precision inputs computed in float32: softmax of large logits overflows in fp16 and
    loses the small probabilities that carry dark knowledge in bf16."""
    return tuple(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in tensors)


def float32_math(loss: Callable) -> Callable:
    """Run ``loss`` with autocast off on its inputs' device.

    ``upcast`` alone is not enough under mixed precision: autocast turns every matmul back to
    bf16/fp16 even on float32 operands, and a Gram matrix or a distance computed that way is
    far off (RKD's distances, CC's kernel) or overflows (SP's Gram matrix in fp16). Elementwise
    math follows its (upcast) inputs, so only the matmuls change, back to float32.
    """

    @functools.wraps(loss)
    def in_float32(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, Tensor)), None)
        if device is None or not torch.is_autocast_enabled(device):
            return loss(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return loss(*args, **kwargs)

    return in_float32


def kl_batchmean(student_log_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL(teacher ‖ student) summed over classes and averaged over the batch.

    ``F.kl_div`` takes the *student* log-probabilities as ``input`` and the *teacher*
    probabilities as ``target``; swapping them silently computes the reverse KL. ``'batchmean'``
    divides by N only; ``'mean'`` would also divide by the number of classes.
    """
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def cross_entropy(s_logits: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with the true labels, mean over the batch (the hard-label term).

    Args:
        s_logits: student logits, (N, C).
        target: class indices, (N,), int64.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    """
    (s_logits,) = upcast(s_logits)
    return F.cross_entropy(s_logits, target, label_smoothing=label_smoothing)


def standardize_logits(logits: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits over the classes: (z − mean) / (std + eps).

    Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024,
    arXiv:2403.01427. The standard deviation uses Bessel's correction (``torch.std``) and ``eps``
    sits outside the root, as in the authors' code. After it, the student only has to match the
    *relations* among the teacher's logits, not their range: a student whose logits are any
    positive multiple of the teacher's, plus any shift, is already a perfect match.

    Args:
        logits: (N, C).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def kd(
    s_logits: Tensor, t_logits: Tensor, *, temperature: float = 4.0, standardize: bool = False
) -> Tensor:
    """Soft-target distillation: T² · KL(softmax(t/T) ‖ softmax(s/T)), batch mean.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
    Learning Workshop, arXiv:1503.02531. The T² keeps the gradient's magnitude independent of
    the temperature (the soft-target gradient scales as 1/T²), so the weight between this term
    and the cross-entropy means the same at every T. Matches RepDistiller ``DistillKL``,
    mdistiller ``kd_loss`` and torchdistill ``KDLoss`` bit for bit.

    Args:
        s_logits: student logits, (N, C).
        t_logits: teacher logits, (N, C); detached, so no gradient ever reaches the teacher.
        temperature: T > 0; higher softens both distributions. With ``standardize`` it is the
            *base* temperature of the standardised logits (the authors use 2 on CIFAR-100).
        standardize: z-score both logits first (``standardize_logits``; Sun et al., CVPR 2024).

    Returns:
        0-d tensor. Gradient w.r.t. ``s_logits``: (T/N) · (softmax(s/T) − softmax(t/T)).
    """
    s_logits, t_logits = upcast(s_logits, t_logits.detach())
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    student_log_probs = F.log_softmax(s_logits / temperature, dim=-1)
    teacher_probs = F.softmax(t_logits / temperature, dim=-1)
    return kl_batchmean(student_log_probs, teacher_probs) * temperature**2


def _other_classes(scores: Tensor, target: Tensor) -> Tensor:
    """Each row's scores without its target class, in class order: (N, C) -> (N, C − 1).

    A gather with computed indices rather than boolean-mask indexing: a mask's output size is
    data-dependent, which costs a host-device synchronisation per call on a GPU and breaks a
    ``torch.compile`` graph.
    """
    n, num_classes = scores.shape
    index = torch.arange(num_classes - 1, device=scores.device).expand(n, -1)
    index = index + (index >= target.unsqueeze(1)).long()  # skip past the target class
    return scores.gather(1, index)


def _split_target(log_probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Split class log-probabilities (N, C) into the binary target / non-target log-probabilities
    (N, 2) and the non-target classes' own log-distribution (N, C − 1).

    Both are computed in log space (a gather and a logsumexp) rather than by summing
    probabilities and taking ``torch.log``: a confident sample's non-target mass underflows to 0
    in float32, and its log to −inf.
    """
    target_log_prob = log_probs.gather(1, target.unsqueeze(1))
    others = _other_classes(log_probs, target)
    binary = torch.cat([target_log_prob, torch.logsumexp(others, dim=1, keepdim=True)], dim=1)
    return binary, F.log_softmax(others, dim=1)


def dkd(
    s_logits: Tensor,
    t_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> Tensor:
    """Decoupled KD: α · TCKD + β · NCKD, each T²-scaled and averaged over the batch.

    Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022,
    arXiv:2203.08679. KD's KL splits per sample into KL(b_T ‖ b_S) over the two bins "target /
    non-target" (TCKD) plus (1 − p_T[target]) · KL(q_T ‖ q_S) over the non-target classes
    renormalised (NCKD). DKD drops that (1 − p_T[target]) factor, which suppresses NCKD exactly
    where the teacher is confident, and weighs the parts freely. Matches mdistiller ``dkd_loss``.

    mdistiller removes the target class from NCKD by subtracting 1000 from its (softened) logit;
    here it is dropped from the tensor, which is the same wherever that offset masks the class
    and stays exact for any logit scale. The binary probabilities are formed in log space
    (mdistiller takes ``torch.log`` of summed probabilities, −inf for a confident student in low
    precision). The warm-up ``min(epoch / 20, 1)`` and the CE term are not part of the loss:
    they are the ``Term``'s ``warmup_epochs`` and a separate term (preset ``dkd``).

    Args:
        s_logits: student logits, (N, C).
        t_logits: teacher logits, (N, C); detached.
        target: class indices, (N,), int64.
        alpha: weight of TCKD (target-class knowledge).
        beta: weight of NCKD (non-target-class knowledge); 8 on CIFAR-100.
        temperature: T > 0, applied to both parts.
        standardize: z-score both logits first (Sun et al., CVPR 2024; ``standardize_logits``).

    Returns:
        0-d tensor.
    """
    s_logits, t_logits = upcast(s_logits, t_logits.detach())
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    s_binary, s_others = _split_target(F.log_softmax(s_logits / temperature, dim=1), target)
    t_binary, t_others = _split_target(F.log_softmax(t_logits / temperature, dim=1), target)
    tckd = kl_batchmean(s_binary, t_binary.exp()) * temperature**2
    nckd = kl_batchmean(s_others, t_others.exp()) * temperature**2
    return alpha * tckd + beta * nckd


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: (N,).

    ``F.cosine_similarity`` of the centred rows, whose ``eps`` bounds each norm from below, as
    torchdistill's ``DISTLoss``; the DIST authors add 1e-8 to the product of the norms instead.
    The two agree where the norms are large and part where they are small: a class whose
    probability hardly varies over the batch (a confident teacher, many classes) has a tiny
    centred column, and the intra-class term differs there. Measured relative difference of
    ``dist`` (float32, N(0, 1) logits times a scale; ``tests/test_correctness.py``): 0 on 8×10,
    3e-7 on 64×1000, 1.4e-3 on 8×1000 with the teacher's logits ×10; an audit found up to 2e-3
    at 1000 classes and 0.11 with a confident teacher. Not "about 1e-8".
    """
    return F.cosine_similarity(
        a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), dim=1, eps=eps
    )


def dist(
    s_logits: Tensor,
    t_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST: match the *relations* of the predictions, not their values, via Pearson correlation.

    Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
    arXiv:2205.10536. With p = softmax(logits / τ):
    loss = τ² · [β · (1 − mean over samples of pearson(p_S[i, :], p_T[i, :]))   (inter-class)
                 + γ · (1 − mean over classes of pearson(p_S[:, c], p_T[:, c]))]  (intra-class).
    Correlation is invariant to shifts and scales of each row, so a much stronger teacher's
    sharper distribution is not imposed on a weak student. Matches torchdistill ``DISTLoss``.

    Args:
        s_logits: student logits, (N, C).
        t_logits: teacher logits, (N, C); detached.
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation (needs N > 1 to mean anything).
        temperature: τ > 0 (1 on ImageNet in the paper).

    Returns:
        0-d tensor, in [0, 2·τ²·(β + γ)].
    """
    s_logits, t_logits = upcast(s_logits, t_logits.detach())
    s_probs = F.softmax(s_logits / temperature, dim=1)
    t_probs = F.softmax(t_logits / temperature, dim=1)
    inter = 1 - _pearson_rows(s_probs, t_probs).mean()
    intra = 1 - _pearson_rows(s_probs.T, t_probs.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def nkd(
    s_logits: Tensor,
    t_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
) -> Tensor:
    """Normalized KD: target CE weighted by the teacher, plus γ·T²·CE of the non-target classes.

    The second part is the cross-entropy between the teacher's and the student's renormalised
    non-target distributions.

    Yang, Zeng, Li, Zhang, Yuan, Li, "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels",
    ICCV 2023, arXiv:2303.13005. Follows the authors' ``NKDLoss`` (yzd-v/cls_KD):
    loss = −mean_i p_T[i, y_i] log p_S[i, y_i] − γT² mean_i Σ_{c≠y_i} q_T[i, c] log q_S[i, c],
    where p is the softmax at temperature 1 and q the softmax of the non-target logits at T.

    It is a sum of cross-entropies, not of KLs: it is not zero when the student equals the
    teacher (the target part keeps pulling the target probability up), but the non-target part
    is minimal there.

    Args:
        s_logits: student logits, (N, C).
        t_logits: teacher logits, (N, C); detached.
        target: class indices, (N,), int64.
        temperature: T of the non-target part (1 on ImageNet).
        gamma: weight of the non-target part (1.5 on ImageNet).

    Returns:
        0-d tensor, batch mean.
    """
    s_logits, t_logits = upcast(s_logits, t_logits.detach())
    index = target.unsqueeze(1)
    s_target_log_prob = F.log_softmax(s_logits, dim=1).gather(1, index)
    t_target_prob = F.softmax(t_logits, dim=1).gather(1, index)
    target_part = -(t_target_prob * s_target_log_prob).mean()
    s_others = _other_classes(s_logits, target) / temperature
    t_others = _other_classes(t_logits, target) / temperature
    others_part = -(F.softmax(t_others, dim=1) * F.log_softmax(s_others, dim=1)).sum(1).mean()
    return target_part + gamma * temperature**2 * others_part


LOGIT_LOSSES = {
    "ce": cross_entropy,
    "kd": kd,
    "dkd": dkd,
    "dist": dist,
    "nkd": nkd,
}
