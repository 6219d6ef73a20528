"""Trainable projections from a student feature to the teacher feature's shape.

FitNets (Romero et al., ICLR 2015, arXiv:1412.6550) regress the student's hint layer onto the
teacher's through such a connector; it trains with the student and is thrown away after.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

CONNECTORS = ("auto", "identity", "linear", "conv")


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
    """
    if kind not in CONNECTORS:
        raise ValueError(f"connector {kind!r}: choose from {', '.join(CONNECTORS)}")
    same = tuple(student_shape[1:]) == tuple(teacher_shape[1:])
    if kind == "identity" or (kind == "auto" and same):
        return nn.Identity()
    if kind == "conv" or (kind == "auto" and len(student_shape) == 4):
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            raise ValueError(
                f"a conv connector needs (N, C, H, W) features, got {student_shape} → {teacher_shape}"
            )
        return ConvConnector(student_shape[1], teacher_shape[1], teacher_shape[2:])
    return nn.Linear(student_shape[-1], teacher_shape[-1])
