"""Several teachers as one model: their class probabilities combined per sample.

The combination is a mixture of the members' distributions, returned as its log (valid
logits: softmax of them is the mixture). A temperature applied downstream then softens the
mixture itself, ``softmax(log p̄ / T) ∝ p̄^(1/T)``.

- ``mean``: p̄ = (1/K) Σ p_k, the usual ensemble (Hinton et al. 2015 distil an ensemble so).
- ``weights``: p̄ = Σ w_k p_k with fixed weights (normalised to sum to 1).
- ``confidence``: per-sample weights proportional to each member's confidence, its top-1
  probability, so a teacher that is sure of a sample counts more on it; a label-free variant
  of confidence-aware multi-teacher KD (Zhang, Chen, Wang, ICASSP 2022, arXiv:2201.00007,
  which weights by the cross-entropy with the label).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.modeling import call_model
from kdistill.teaching.roles import Role, Roles, School, train_student

COMBINE = ("mean", "weights", "confidence")


class Ensemble(nn.Module):
    """Members ``members.0``, ``members.1``, ... (tap names reach into them as usual)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: str = "mean",
        weights: Sequence[float] | None = None,
    ):
        super().__init__()
        if combine not in COMBINE:
            raise ValueError(f"ensemble combine={combine!r}: choose from {', '.join(COMBINE)}")
        if combine == "weights":
            if (
                weights is None
                or len(weights) != len(members)
                or min(weights) < 0
                or sum(weights) <= 0
            ):
                raise ValueError(
                    f"ensemble weights: give {len(members)} non-negative weights, one per teacher"
                )
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.register_buffer(
            "weights",
            torch.tensor(
                weights if weights is not None else [1.0] * len(members), dtype=torch.float32
            ),
            persistent=False,
        )

    def member_weights(self, probs: Tensor) -> Tensor:
        """(K, N) weights summing to 1 over the members, for probabilities ``probs`` (K, N, C)."""
        if self.combine == "confidence":
            confidence = probs.max(dim=-1).values
            return confidence / confidence.sum(dim=0, keepdim=True)
        weights = self.weights.to(probs.dtype) / self.weights.sum()
        return weights[:, None].expand(probs.shape[:2])

    def forward(self, x) -> Tensor:

        logits = torch.stack(
            [call_model(member, x).float() for member in self.members]
        )  # (K, N, C)
        log_probs = F.log_softmax(logits, dim=-1)
        weights = self.member_weights(log_probs.exp())
        # log Σ_k w_k p_k, computed in log space so tiny probabilities stay finite.
        return torch.logsumexp(log_probs + weights.clamp_min(1e-30).log()[..., None], dim=0)


def teach(
    school: School,
    *,
    members: int,
    combine: str = "mean",
    weights: Sequence[float] | None = None,
    cached: bool = False,
) -> Roles:
    """Each member teacher obtained (trained, loaded or reused) on its own seed, combined into one
    ``Ensemble`` that teaches the student as a single teacher would."""
    roles = [school.obtain_teacher(member=i) for i in range(members)]
    model = Ensemble([r.model for r in roles], combine, weights)
    school.keep(model, "teacher.safetensors")
    sources = "; ".join(f"{r.architecture['model']}: {r.source}" for r in roles)
    teacher = Role(
        model,
        {"ensemble": [r.architecture for r in roles], "combine": combine, "weights": weights},
        "teacher.safetensors",
        sum(r.seconds for r in roles),
        source=f"ensemble ({combine}) of {sources}",
    )
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    student = train_student(
        school, "student", school.distill_terms, school.frozen(model, cached=cached)
    )
    return {"teacher": teacher, "scratch": scratch, "student": student}
