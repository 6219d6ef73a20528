"""Trainable projections from a student feature to the teacher feature's shape, and trained
embeddings of both sides.

FitNets (Romero et al., ICLR 2015, arXiv:1412.6550) regress the student's hint layer onto the
teacher's through such a connector (``"regressor"``: always trained, even when the shapes
already match, as RepDistiller's ``ConvReg``); it trains with the student and is thrown away
after. Correlation congruence, as RepDistiller trains it, compares 128-d linear embeddings of
both models (``EmbeddedPair``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses import LOSSES

CONNECTORS = ("auto", "identity", "linear", "conv", "regressor")


class ConvConnector(nn.Module):
    """1×1 conv → BN → ReLU to the teacher's channels, then resampled to the teacher's H×W.

    RepDistiller's ConvReg also ends in BN + ReLU: teacher feature maps are post-activation.
    """

    def __init__(self, in_channels: int, out_channels: int, out_size: tuple[int, int]):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_size = tuple(out_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        if tuple(x.shape[-2:]) != self.out_size:
            if x.shape[-1] > self.out_size[-1]:
                x = F.adaptive_avg_pool2d(x, self.out_size)
            else:
                x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x


def build_connector(
    kind: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> nn.Module:
    """A connector mapping features of ``student_shape`` to ``teacher_shape`` (batch axis first).

    ``auto`` is the identity when the shapes already match, a 1×1 conv for feature maps
    (N, C, H, W), and a linear layer on the last axis otherwise ((N, D) or tokens (N, L, D)).
    ``regressor`` is ``auto`` without the identity: a trained 1×1 conv + BN + ReLU (or linear)
    map even between equal shapes, FitNets' regressor as RepDistiller trains it (the weight 100
    of its FitNet recipe was tuned with it).
    """
    if kind not in CONNECTORS:
        raise ValueError(f"connector {kind!r}: choose from {', '.join(CONNECTORS)}")
    same = tuple(student_shape[1:]) == tuple(teacher_shape[1:])
    if kind == "regressor":
        kind = "conv" if len(student_shape) == 4 and len(teacher_shape) == 4 else "linear"
    if kind == "identity" or (kind == "auto" and same):
        return nn.Identity()
    if kind == "conv" or (kind == "auto" and len(student_shape) == 4):
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            raise ValueError(
                "a conv connector needs (N, C, H, W) features, "
                f"got {student_shape} → {teacher_shape}"
            )
        return ConvConnector(student_shape[1], teacher_shape[1], teacher_shape[2:])
    return nn.Linear(student_shape[-1], teacher_shape[-1])


class LinearEmbed(nn.Module):
    """Flatten each sample, then a linear map to ``dim``: RepDistiller's ``LinearEmbed``."""

    def __init__(self, dim_in: int, dim: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class EmbeddedPair(nn.Module):
    """A loss between trained embeddings of the student's and the teacher's features.

    RepDistiller's correlation congruence (``--distill correlation``) embeds each side with its
    own 128-d ``LinearEmbed``, both in the trainable list, and compares the embeddings; the
    published weight 0.02 belongs to that setting. The teacher's embedding learns from the loss
    alone; the teacher itself stays frozen (its features arrive detached).

    Built by ``Distiller.build`` from the probed shapes (``from_shapes``), like a stateful loss.

    Args:
        student_dim, teacher_dim: flattened feature sizes of the two sides.
        loss: the loss of the two embeddings, symmetric in its two arguments (``"cc"``, in
            every variant): a name in ``kdistill.losses.LOSSES`` or a function.
        dim: embedding width (128 in RepDistiller).
        **params: keyword hyper-parameters of ``loss``.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        loss: str | Callable = "cc",
        dim: int = 128,
        **params,
    ):
        super().__init__()
        self.student = LinearEmbed(student_dim, dim)
        self.teacher = LinearEmbed(teacher_dim, dim)
        self.loss = LOSSES[loss] if isinstance(loss, str) else loss
        self.params = params

    @classmethod
    def from_shapes(
        cls,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        *,
        num_samples: int | None = None,
        **params,
    ) -> EmbeddedPair:
        flat = [math.prod(shape[1:]) for shape in (student_shape, teacher_shape)]
        return cls(*flat, **params)

    def forward(self, s_feat: Tensor, t_feat: Tensor) -> Tensor:
        s_emb, t_emb = self.student(s_feat), self.teacher(t_feat.detach())
        # Losses detach their second argument (a frozen teacher's output), but here the teacher
        # side is a trained embedding too. For a symmetric loss, L(s, t̄) + L(t, s̄) − L(s̄, t̄)
        # has L's value and both of its partial gradients (t̄: detached).
        forward = self.loss(s_emb, t_emb, **self.params)
        swapped = self.loss(t_emb, s_emb, **self.params)
        return forward + swapped - self.loss(s_emb.detach(), t_emb.detach(), **self.params)
