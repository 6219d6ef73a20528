"""Feature distillation: losses between intermediate feature maps (FitNet hints, attention
transfer, neuron selectivity transfer).

Student first, teacher second. Feature maps are (N, C, H, W); channel counts may differ where the
method allows it, and where spatial sizes differ the larger map is average-pooled to the smaller
one, as the reference implementations do. Teacher features are detached inside every loss;
half-precision inputs are computed in float32, with autocast off (``float32_math``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import float32_math, upcast

__all__ = ["FEATURE_LOSSES", "at", "hint", "nst", "pool_to_common_size"]


def _require_maps(name: str, *features: Tensor) -> None:
    for feature in features:
        if feature.dim() != 4:
            raise ValueError(
                f"{name}: expects feature maps (N, C, H, W), got shape {tuple(feature.shape)}; "
                "tap a convolutional stage, or use a relation loss (sp, rkd, pkt) for vectors"
            )


def pool_to_common_size(s_feat: Tensor, t_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool two (N, C, H, W) maps to their common smaller size (min H, min W).

    RepDistiller pools the larger map to the smaller *height* squared, (h, h), which assumes
    square maps; for square maps this is the same, and it is also right for non-square ones.
    """
    size = tuple(min(a, b) for a, b in zip(s_feat.shape[-2:], t_feat.shape[-2:]))
    if tuple(s_feat.shape[-2:]) != size:
        s_feat = F.adaptive_avg_pool2d(s_feat, size)
    if tuple(t_feat.shape[-2:]) != size:
        t_feat = F.adaptive_avg_pool2d(t_feat, size)
    return s_feat, t_feat


@float32_math
def hint(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """FitNet hint: mean squared error between the (regressed) student and teacher features.

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets",
    ICLR 2015, arXiv:1412.6550. The paper writes ½‖·‖² summed; RepDistiller ``HintLoss`` and
    mdistiller take the plain element mean, which this matches (their weight 100 assumes it).
    The student's regressor is a connector of the ``Term`` (``connector="auto"``), not part of
    the loss.

    Args:
        s_feat: student feature (after the connector), any shape equal to the teacher's.
        t_feat: teacher feature; detached.

    Returns:
        0-d tensor, mean over all N·C·H·W elements.
    """
    s_feat, t_feat = upcast(s_feat, t_feat.detach())
    if s_feat.shape != t_feat.shape:
        raise ValueError(
            f"hint: student feature {tuple(s_feat.shape)} and teacher feature "
            f"{tuple(t_feat.shape)} differ; give the term a connector (connector='auto')"
        )
    return F.mse_loss(s_feat, t_feat)


def _attention_map(feature: Tensor, p: float, mode: str) -> Tensor:
    """Spatial attention: |A|^p aggregated over channels, flattened, L2-normalised per sample.

    The code mode averages over channels, the paper mode sums; after the normalisation the two
    differ only through the 1e-12 floor of ``F.normalize``.
    """
    energy = feature.abs().pow(p)
    energy = energy.mean(dim=1) if mode == "code" else energy.sum(dim=1)
    return F.normalize(energy.flatten(1), dim=1)


@float32_math
def at(s_feat: Tensor, t_feat: Tensor, *, p: float = 2, mode: str = "code") -> Tensor:
    """Attention transfer: distance between the normalised spatial attention maps.

    Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928.
    With a(f) = normalize(flatten(Σ_c |f_c|^p)):

    - ``mode="code"`` (default): mean over N·H·W of (a_S − a_T)², as the authors' code,
      RepDistiller ``Attention``, mdistiller and torchdistill ``ATLoss(mode='code')``; the
      published weight 1000 (per stage, summed over stages) is for this form.
    - ``mode="paper"``: (1/N) Σ_i ‖a_S[i] − a_T[i]‖₂, the paper's Eq. 2 without its β/2,
      as torchdistill ``ATLoss(mode='paper')``. Its gradient is undefined where a_S[i] = a_T[i].

    Channel counts may differ (the attention map sums them away). Where spatial sizes differ the
    larger map is average-pooled to the smaller one first (RepDistiller; torchdistill's paper mode
    requires equal sizes). The paper's |f|^p is used; RepDistiller's f^p is the same for even p.

    Args:
        s_feat: student feature map, (N, C_s, H_s, W_s).
        t_feat: teacher feature map, (N, C_t, H_t, W_t); detached.
        p: exponent of the activations (2 in the paper and the references).
        mode: ``"code"`` or ``"paper"``.

    Returns:
        0-d tensor.
    """
    if mode not in ("code", "paper"):
        raise ValueError(f"at: mode={mode!r}; choose 'code' or 'paper'")
    s_feat, t_feat = upcast(s_feat, t_feat.detach())
    _require_maps("at", s_feat, t_feat)
    s_feat, t_feat = pool_to_common_size(s_feat, t_feat)
    difference = _attention_map(s_feat, p, mode) - _attention_map(t_feat, p, mode)
    if mode == "code":
        return difference.pow(2).mean()
    return difference.norm(dim=1).mean()


def _polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over n, i, j of (a[n, i] · b[n, j])², the NST kernel k(x, y) = (xᵀy)²."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


@float32_math
def nst(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Neuron selectivity transfer: squared MMD between channel activation patterns.

    The MMD compares the student's and the teacher's distributions of channel patterns, with the
    kernel k(x, y) = (xᵀy)².

    Huang, Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    arXiv:1707.01219 (2017). Each channel's H·W activations are one sample, L2-normalised:
    loss = mean k(t_i, t_j) + mean k(s_i, s_j) − 2 mean k(s_i, t_j), each mean over N·C·C'.
    Matches RepDistiller ``NSTLoss`` (full loss) and mdistiller. Channel counts may differ;
    spatial sizes are pooled to the smaller map.

    Args:
        s_feat: student feature map, (N, C_s, H_s, W_s).
        t_feat: teacher feature map, (N, C_t, H_t, W_t); detached.

    Returns:
        0-d tensor, ≥ 0, zero when the maps are equal.
    """
    s_feat, t_feat = upcast(s_feat, t_feat.detach())
    _require_maps("nst", s_feat, t_feat)
    s_feat, t_feat = pool_to_common_size(s_feat, t_feat)
    s_patterns = F.normalize(s_feat.flatten(2), dim=2)
    t_patterns = F.normalize(t_feat.flatten(2), dim=2)
    return (
        _polynomial_kernel_mean(t_patterns, t_patterns)
        + _polynomial_kernel_mean(s_patterns, s_patterns)
        - 2 * _polynomial_kernel_mean(s_patterns, t_patterns)
    )


FEATURE_LOSSES = {
    "hint": hint,
    "at": at,
    "nst": nst,
}
