"""Deep mutual learning: two students trained together, each distilled from the other, with no
fixed teacher (Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018,
arXiv:1706.00384).

Each student minimises CE(y, p_self) + weight · T²·KL(p_peer ‖ p_self), the peer's
distribution treated as a constant in that student's loss (as in the paper's alternating
updates, here taken in one joint step).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from kdistill.distiller import Distiller
from kdistill.losses import cross_entropy, kd
from kdistill.methods import Term
from kdistill.modeling import ModelOutput, call_model
from kdistill.teaching.roles import Role, Roles, School, train_student


class MutualDistiller(Distiller):
    """``student`` and ``peer`` in one trainable module; ``logits`` are the student's."""

    def __init__(
        self, student: nn.Module, peer: nn.Module, *, weight: float = 1.0, temperature: float = 1.0
    ):
        super().__init__(student, [Term("ce", "ce", teacher=None)])
        self.peer = peer
        self.weight = weight
        self.temperature = temperature

    @property
    def needs_teacher(self) -> bool:
        return False

    def forward(self, batch: Mapping, teacher_out: ModelOutput | None = None) -> dict[str, Tensor]:
        target = batch["target"]
        logits = call_model(self.student, batch["input"])
        peer_logits = call_model(self.peer, batch["input"])
        # kd() detaches its teacher argument: each student learns from the other, not through it.
        result = {
            "logits": logits,
            "loss/ce": cross_entropy(logits, target),
            "loss/kd": self.weight * kd(logits, peer_logits, temperature=self.temperature),
            "loss/peer_ce": cross_entropy(peer_logits, target),
            "loss/peer_kd": self.weight * kd(peer_logits, logits, temperature=self.temperature),
        }
        result["loss"] = torch.stack([v for k, v in result.items() if k.startswith("loss/")]).sum()
        return result


def teach(school: School, *, weight: float = 1.0, temperature: float = 1.0) -> Roles:
    """The scratch baseline, then the student and a peer (the teacher section's architecture,
    untrained) learning together; the peer is reported as the teacher."""
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    student = school.build("student")
    peer = school.build("teacher", reseed=False)  # drawn after the student, from the same seed
    seconds = school.fit(
        "student", MutualDistiller(student, peer, weight=weight, temperature=temperature), None
    )
    school.keep(peer, "peer.safetensors")
    return {
        "teacher": Role(
            peer,
            school.architecture("teacher"),
            "peer.safetensors",
            seconds,
            source="deep mutual learning peer, trained alongside the student",
        ),
        "scratch": scratch,
        "student": Role(student, school.architecture("student"), "student.safetensors", seconds),
    }
