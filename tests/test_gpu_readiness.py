"""What a GPU run depends on, checked on the CPU: loss math in float32 under mixed precision, no
host-device synchronisation per training step, and compile-friendly losses (issue 19)."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from kdistill import Distiller, Term
from kdistill.distiller import ModelOutput
from kdistill.losses import cc, dkd, nkd, nst, pkt, rkd, sp

# Every feature and relation loss that multiplies matrices, with the feature shape it compares.
MATMUL_LOSSES = [
    ("sp", (8, 4, 5, 5)), ("rkd", (8, 24)), ("pkt", (8, 24)), ("cc", (8, 24)),
    ("nst", (8, 4, 5, 5)), ("at", (8, 4, 5, 5)), ("hint", (8, 4, 5, 5)),
]


class FeatureStudent(nn.Module):
    """The tapped feature is the input itself (an identity, which autocast leaves in float32),
    so any difference under autocast comes from the loss math alone."""

    def __init__(self, shape):
        super().__init__()
        self.feature = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape[1:]).prod()), 3))

    def forward(self, x):
        return self.head(self.feature(x))


@pytest.mark.parametrize(("loss", "shape"), MATMUL_LOSSES)
def test_loss_inside_the_distiller_keeps_its_float32_value_under_bf16_autocast(loss, shape):
    generator = torch.Generator().manual_seed(0)
    # An offset makes the Gram matrices' entries large, where bf16 keeps 2-3 digits only.
    student_feature = torch.randn(shape, generator=generator) + 3.0
    teacher_feature = student_feature + 0.3 * torch.randn(shape, generator=generator)
    distiller = Distiller(FeatureStudent(shape), [Term(loss, loss, student="feature", teacher="t")])
    batch = {"input": student_feature, "target": torch.zeros(shape[0], dtype=torch.long)}
    teacher_out = ModelOutput(torch.zeros(shape[0], 3), {"t": teacher_feature})
    expected = distiller(batch, teacher_out)[f"loss/{loss}"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = distiller(batch, teacher_out)[f"loss/{loss}"]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", [sp, rkd, pkt, cc])
def test_relation_loss_called_directly_under_autocast_computes_in_float32(loss):
    generator = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 24, generator=generator) + 3.0, torch.randn(8, 24, generator=generator) + 3.0
    expected = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(s, t), expected, rtol=1e-5, atol=1e-7)


def test_nst_called_directly_under_autocast_computes_in_float32():
    generator = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, 5, 5, generator=generator) + 3.0, torch.randn(4, 6, 5, 5, generator=generator)
    expected = nst(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(nst(s, t), expected, rtol=1e-5, atol=1e-7)
