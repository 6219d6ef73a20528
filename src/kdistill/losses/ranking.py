"""Recommendation losses over candidate lists: the hard-label terms a recommender trains with,
and rating and ranking distillation.

Scores are (B, L, 2): for each of B users, L candidate items, each scored as a predicted rating
(channel 0) and a preference logit (channel 1, "did the user interact"), the layout of
``kdistill.models.recsys.NeuMF``. Targets are (B, L): the star rating of an item the user rated,
0 for a sampled item the user never rated. Student first, teacher second; the teacher is
detached, so no gradient ever reaches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import kl_batchmean, upcast

RATING, PREFERENCE = 0, 1

__all__ = [
    "RANKING_LOSSES",
    "listwise_kd",
    "preference_bce",
    "ranking_distillation",
    "rating_distillation",
    "rating_mse",
]


def _check(scores: Tensor, name: str) -> None:
    if scores.dim() < 2 or scores.shape[-1] < 2:
        raise ValueError(
            f"{name}: scores must be (..., 2) = (rating, preference), got {tuple(scores.shape)}"
        )


def rating_mse(s_scores: Tensor, target: Tensor) -> Tensor:
    """Squared error of the predicted rating on the rated candidates only, mean over them.

    Args:
        s_scores: student scores, (B, L, 2); channel 0 is the rating.
        target: (B, L) star ratings; 0 marks an unrated (sampled) item, which is skipped.

    Returns:
        0-d tensor (0 with a gradient path when no candidate is rated).
    """
    _check(s_scores, "rating_mse")
    (s_scores,) = upcast(s_scores)
    rated = target > 0
    if not rated.any():
        return s_scores[..., RATING].sum() * 0.0
    return F.mse_loss(s_scores[..., RATING][rated], target[rated].to(s_scores.dtype))


def preference_bce(s_scores: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the preference logit against "rated" (target > 0), mean over all
    B·L candidates: the implicit-feedback loss of NCF (He et al., WWW 2017, arXiv:1708.05031)
    with sampled negatives.

    Args:
        s_scores: student scores, (B, L, 2); channel 1 is the preference logit.
        target: (B, L); > 0 for rated items, 0 for sampled negatives.
    """
    _check(s_scores, "preference_bce")
    (s_scores,) = upcast(s_scores)
    return F.binary_cross_entropy_with_logits(
        s_scores[..., PREFERENCE], (target > 0).to(s_scores.dtype)
    )


def rating_distillation(s_scores: Tensor, t_scores: Tensor) -> Tensor:
    """Rating regression distillation: squared error between the student's and the teacher's
    predicted ratings on every candidate, rated or not, mean over B·L.

    The student regresses the teacher's real-valued outputs, as in Ba & Caruana, "Do Deep Nets
    Really Need to be Deep?", NIPS 2014, arXiv:1312.6184. On unrated candidates the teacher's
    rating is the only signal there is: that is the knowledge the labels lack.

    Args:
        s_scores: student scores, (B, L, 2); channel 0 is the rating.
        t_scores: teacher scores, (B, L, 2); detached.
    """
    _check(s_scores, "rating_distillation")
    s_scores, t_scores = upcast(s_scores, t_scores.detach())
    return F.mse_loss(s_scores[..., RATING], t_scores[..., RATING])


def listwise_kd(s_scores: Tensor, t_scores: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Listwise ranking distillation: T² · KL(softmax(t/T) ‖ softmax(s/T)) over each user's
    candidate list of preference logits, summed over the list and averaged over users.

    The softmax over a list is ListNet's top-one probability (Cao, Qin, Liu, Tsai, Li, "Learning
    to Rank: From Pairwise Approach to Listwise Approach", ICML 2007); matching the teacher's
    with Hinton's T²-scaled KL (arXiv:1503.02531) teaches the student the teacher's whole order
    of the list, the top-ranked items most.

    Args:
        s_scores: student scores, (B, L, 2); channel 1 is the preference logit.
        t_scores: teacher scores, (B, L, 2); detached.
        temperature: T > 0; higher flattens both distributions over the list.

    Returns:
        0-d tensor, batch mean. Zero when the student's logits equal the teacher's up to a
        per-user constant.
    """
    _check(s_scores, "listwise_kd")
    s_scores, t_scores = upcast(s_scores, t_scores.detach())
    student_log_probs = F.log_softmax(s_scores[..., PREFERENCE] / temperature, dim=-1)
    teacher_probs = F.softmax(t_scores[..., PREFERENCE] / temperature, dim=-1)
    return kl_batchmean(student_log_probs, teacher_probs) * temperature**2


def ranking_distillation(
    s_scores: Tensor, t_scores: Tensor, target: Tensor, *, top_k: int = 5, sharpness: float = 1.0
) -> Tensor:
    """Ranking Distillation: the teacher's top-K unlabelled candidates become weighted positives.

    Tang & Wang, "Ranking Distillation: Learning Compact Ranking Models With High Performance
    for Recommender System", KDD 2018, arXiv:1809.07428. For each user, the K candidates the
    teacher ranks highest among those without a label (target 0) are taken, in the teacher's
    order π_1..π_K, and the student is asked to score them as relevant:

        L = − Σ_r w_r · log σ(s_{π_r}),   w_r = exp(−r / λ) / Σ_j exp(−j / λ),

    mean over users. These are the paper's position-importance weights (λ = ``sharpness``);
    its second, dynamic "ranking discrepancy" weight, which needs the student's rank among all
    items, is not used. Here the ranking is over each sample's candidate list (the rated item
    and its sampled negatives), not over the whole catalogue.

    Args:
        s_scores: student scores, (B, L, 2); channel 1 is the preference logit.
        t_scores: teacher scores, (B, L, 2); detached.
        target: (B, L); candidates with target > 0 already carry a label and are skipped.
        top_k: K, how many of the teacher's top candidates to distil; at most the number of
            unlabelled candidates per list.
        sharpness: λ > 0; smaller concentrates the weight on the teacher's first items.
    """
    _check(s_scores, "ranking_distillation")
    s_scores, t_scores = upcast(s_scores, t_scores.detach())
    s_pref, t_pref = s_scores[..., PREFERENCE], t_scores[..., PREFERENCE]
    unlabelled = target <= 0
    if int(unlabelled.sum(dim=-1).min()) < top_k:
        raise ValueError(
            f"ranking_distillation: top_k={top_k} but a list has only "
            f"{int(unlabelled.sum(dim=-1).min())} unlabelled candidates"
        )
    ranked = (
        torch.where(unlabelled, t_pref, torch.full_like(t_pref, -torch.inf))
        .topk(top_k, dim=-1)
        .indices
    )
    positions = torch.arange(1, top_k + 1, dtype=s_pref.dtype, device=s_pref.device)
    weights = torch.softmax(-positions / sharpness, dim=0)  # exp(−r/λ), normalised
    return -(weights * F.logsigmoid(s_pref.gather(-1, ranked))).sum(dim=-1).mean()


RANKING_LOSSES = {
    "rating_mse": rating_mse,
    "preference_bce": preference_bce,
    "rating_distillation": rating_distillation,
    "listwise_kd": listwise_kd,
    "ranking_distillation": ranking_distillation,
}
