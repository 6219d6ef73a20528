"""Relation distillation: losses between the relations of the samples within a batch
(similarity preservation, relational KD, probabilistic knowledge transfer, correlation
congruence).

Student first, teacher second. Each sample's feature is flattened to a vector, so the student's
and the teacher's widths may differ (except where a method compares the vectors themselves).
The value depends on which samples share the batch: these losses need N ≥ 2. Teacher features
are detached inside every loss; half-precision inputs are computed in float32 (``upcast``), with
autocast off (``float32_math``), since every one of them multiplies matrices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import float32_math, upcast

__all__ = ["RELATION_LOSSES", "cc", "pkt", "rkd", "sp"]


def _vectors(s_feat: Tensor, t_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Upcast, detach the teacher, and flatten every sample to a vector: (N, D_s), (N, D_t)."""
    s_feat, t_feat = upcast(s_feat, t_feat.detach())
    if s_feat.shape[0] != t_feat.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {s_feat.shape[0]}, teacher {t_feat.shape[0]}"
        )
    return s_feat.flatten(1), t_feat.flatten(1)


@float32_math
def sp(s_feat: Tensor, t_feat: Tensor, *, row_norm_p: float = 2) -> Tensor:
    """Similarity-preserving KD: match the batch's row-normalised Gram matrices.

    Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019, arXiv:1907.09682.
    G = normalize_rows(F Fᵀ), F the (N, D) flattened features; loss = ‖G_T − G_S‖_F² / N².
    Matches RepDistiller ``Similarity`` and mdistiller ``similarity_loss`` (row L2 norm, the
    paper's). ``row_norm_p=1`` gives torchdistill ``SPKDLoss``, whose ``normalize(G, 1)`` sets
    p = 1 rather than the dimension (a different value, kept for comparison only).
    RepDistiller returns shape [1]; this returns the same value as a 0-d tensor.

    Args:
        s_feat: student features, (N, ...) (a stage's (N, C, H, W) map in the paper).
        t_feat: teacher features, (N, ...); detached. Widths may differ.
        row_norm_p: the norm of each Gram row (2 in the paper).

    Returns:
        0-d tensor, published weight 3000.
    """
    s_vectors, t_vectors = _vectors(s_feat, t_feat)
    s_gram = F.normalize(s_vectors @ s_vectors.T, p=row_norm_p, dim=1)
    t_gram = F.normalize(t_vectors @ t_vectors.T, p=row_norm_p, dim=1)
    return (t_gram - s_gram).pow(2).sum() / len(s_vectors) ** 2


def _pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of x, (N, N), with a zero diagonal.

    Through the Gram matrix with a floor of ``eps`` under the square root, as RepDistiller: the
    floor keeps the gradient finite where two samples coincide.
    """
    squared_norms = x.pow(2).sum(dim=1)
    squared = (squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * x @ x.T).clamp(min=eps)
    diagonal = torch.eye(len(x), dtype=torch.bool, device=x.device)
    return squared.sqrt().masked_fill(diagonal, 0.0)


def _normalized_distances(x: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over the (positive) off-diagonal entries, so
    the student is compared on the *shape* of the teacher's distance structure, not its scale."""
    distances = _pairwise_distances(x)
    # The mean over the positive entries without boolean-mask indexing (a host sync per call
    # on a GPU): the other entries are zeros, so the plain sum is the sum of the positive ones.
    return distances / (distances.sum() / (distances > 0).sum())


def _angles(x: Tensor) -> Tensor:
    """cos ∠(x_j − x_i, x_k − x_i) for all i, j, k, flattened (N³,); degenerate ones 0."""
    directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [i, j] = e(x_j − x_i)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


@float32_math
def rkd(
    s_emb: Tensor, t_emb: Tensor, *, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """Relational KD: match the normalised pairwise distances and the triplet angles.

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068.
    Distances are divided by their mean over the off-diagonal pairs; both parts use the Huber
    (smooth-L1, β = 1) loss averaged over *all* N² pairs and N³ triplets, the zero diagonal and
    the degenerate triplets included, exactly as RepDistiller ``RKDLoss``, mdistiller and
    torchdistill (averaging over valid pairs only would change the scale).

    Args:
        s_emb: student embeddings, (N, D_s) (the pooled penultimate feature in the paper);
            anything else is flattened per sample.
        t_emb: teacher embeddings, (N, D_t); detached.
        distance_weight: the paper's λ_D (25).
        angle_weight: the paper's λ_A (50).

    Returns:
        0-d tensor, distance_weight · L_distance + angle_weight · L_angle.
    """
    s_vectors, t_vectors = _vectors(s_emb, t_emb)
    distance_loss = F.smooth_l1_loss(
        _normalized_distances(s_vectors), _normalized_distances(t_vectors)
    )
    angle_loss = F.smooth_l1_loss(_angles(s_vectors), _angles(t_vectors))
    return distance_weight * distance_loss + angle_weight * angle_loss


def _cosine_affinity_distribution(x: Tensor, eps: float) -> Tensor:
    """Row-stochastic matrix of (cos + 1) / 2 affinities, the diagonal included, (N, N)."""
    unit = x / (x.norm(dim=1, keepdim=True) + eps)
    unit = torch.where(torch.isnan(unit), torch.zeros_like(unit), unit)
    affinity = (unit @ unit.T + 1.0) / 2.0
    return affinity / affinity.sum(dim=1, keepdim=True)


@float32_math
def pkt(s_emb: Tensor, t_emb: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: KL between the batch's cosine-affinity distributions.

    Each sample's affinities to the others, normalised, form a conditional distribution; the
    student's should match the teacher's.

    Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018, arXiv:1803.10837. P[i, j] = (cos(x_i, x_j) + 1)/2 normalised over j; loss =
    mean over the N² entries of P_T · log((P_T + eps) / (P_S + eps)), i.e. the row KLs summed
    and divided by N² (not N), as RepDistiller ``PKT``, mdistiller and torchdistill; the
    published weight 30000 compensates for that small scale.

    Args:
        s_emb: student embeddings, (N, D_s); anything else is flattened per sample.
        t_emb: teacher embeddings, (N, D_t); detached.
        eps: added to the norms and inside the logarithm.

    Returns:
        0-d tensor; zero when the embeddings are equal.
    """
    s_vectors, t_vectors = _vectors(s_emb, t_emb)
    s_distribution = _cosine_affinity_distribution(s_vectors, eps)
    t_distribution = _cosine_affinity_distribution(t_vectors, eps)
    return torch.mean(t_distribution * torch.log((t_distribution + eps) / (s_distribution + eps)))


def _correlation_matrix(x: Tensor, kernel: str, gamma: float, order: int) -> Tensor:
    """The (N, N) correlation of the batch: the Gram matrix (``"bilinear"``) or the Gaussian RBF
    exp(−γ‖x_i − x_j‖²) by its order-P Taylor expansion for unit vectors,
    exp(−2γ) Σ_{p=0..P} (2γ)^p / p! · (x_i·x_j)^p (the paper's Eq. 10)."""
    gram = x @ x.T
    if kernel == "bilinear":
        return gram
    series = sum((2 * gamma) ** p / math.factorial(p) * gram**p for p in range(1, order + 1))
    return math.exp(-2 * gamma) * (1 + series)


CC_VARIANTS = ("paper", "torchdistill", "repdistiller")


@float32_math
def cc(
    s_emb: Tensor,
    t_emb: Tensor,
    *,
    variant: str = "paper",
    kernel: str = "gaussian",
    gamma: float = 0.4,
    order: int = 2,
    normalize: bool = True,
) -> Tensor:
    """Correlation congruence: match the correlation between the samples of the batch.

    Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang, "Correlation Congruence for Knowledge
    Distillation", ICCV 2019, arXiv:1904.01802. Three forms, chosen by ``variant``:

    - ``"paper"`` (default): ‖ψ(F_T) − ψ(F_S)‖²_F / N², ψ the kernel correlation matrix.
      The norm is *squared*, as the paper's L_CC writes it: a mean squared difference of the
      N² correlations, smooth at the optimum (the un-squared norm has a kink there and a
      gradient that does not shrink as the student converges).
    - ``"torchdistill"``: torchdistill ``CCKDLoss``, the same matrices with the *un-squared*
      norm, ‖ψ(F_T) − ψ(F_S)‖_F / N² (``torch.dist``).
    - ``"repdistiller"``: RepDistiller ``Correlation``, the code the CC authors gave its
      maintainer: δ = |f_S − f_T|, loss = mean over i < N−1 of Σ_d δ[i, d] · δ[i+1, d]. It
      pairs only *consecutive* rows, so it depends on the order of the batch, and it compares the
      vectors themselves (equal widths needed). Its published weight 0.02 is for this form.

    The Gaussian kernel's Taylor form assumes unit vectors, so the paper and torchdistill forms
    L2-normalise each embedding first (``normalize``); RepDistiller and torchdistill do that
    outside the loss, in an embedding module.

    Args:
        s_emb: student embeddings, (N, D_s); anything else is flattened per sample.
        t_emb: teacher embeddings, (N, D_t); detached. D_s = D_t for ``"repdistiller"``.
        variant: ``"paper"``, ``"torchdistill"`` or ``"repdistiller"``.
        kernel: ``"gaussian"`` (the paper's best) or ``"bilinear"`` (the Gram matrix); not used
            by ``"repdistiller"``.
        gamma: γ of the Gaussian kernel (0.4 as torchdistill's example).
        order: P, the order of the Taylor expansion (2).
        normalize: L2-normalise the embeddings first (paper and torchdistill forms).

    Returns:
        0-d tensor; zero when the embeddings are equal.
    """
    if variant not in CC_VARIANTS:
        raise ValueError(f"cc: variant={variant!r}; choose from {', '.join(CC_VARIANTS)}")
    if kernel not in ("gaussian", "bilinear"):
        raise ValueError(f"cc: kernel={kernel!r}; choose 'gaussian' or 'bilinear'")
    s_vectors, t_vectors = _vectors(s_emb, t_emb)
    if variant == "repdistiller":
        if s_vectors.shape != t_vectors.shape:
            raise ValueError(
                f"cc (repdistiller): student {tuple(s_vectors.shape)} and teacher "
                f"{tuple(t_vectors.shape)} embeddings differ; give the term a connector"
            )
        delta = (s_vectors - t_vectors).abs()
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()
    if normalize:
        s_vectors, t_vectors = F.normalize(s_vectors, dim=1), F.normalize(t_vectors, dim=1)
    difference = _correlation_matrix(s_vectors, kernel, gamma, order) - _correlation_matrix(
        t_vectors, kernel, gamma, order
    )
    scale = len(s_vectors) ** 2
    if variant == "paper":
        return difference.pow(2).sum() / scale
    return torch.linalg.vector_norm(difference) / scale


RELATION_LOSSES = {
    "sp": sp,
    "rkd": rkd,
    "pkt": pkt,
    "cc": cc,
}
