"""The documentation's numbers are the library's numbers."""

import math
import re
from pathlib import Path

import torch

from kdistill.losses import cross_entropy, kd

DOC = Path(__file__).resolve().parents[1] / "docs" / "hinton.md"


def test_worked_example_in_docs_matches_the_losses():
    text = DOC.read_text()
    assert "p_T` | 0.1 | 0.6 | 0.3" in text and "p_S` | 0.2 | 0.5 | 0.3" in text
    p_teacher = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    p_student = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    ce = cross_entropy(p_student.log(), torch.tensor([1])).item()
    kl = kd(p_student.log(), p_teacher.log(), temperature=1.0).item()
    reverse = kd(p_teacher.log(), p_student.log(), temperature=1.0).item()
    stated = {f"{ce:.4f}", f"{kl:.4f}", f"{reverse:.4f}", f"{0.1 * ce + 0.9 * kl:.4f}"}
    assert stated == {"0.6931", "0.0401", "0.0475", "0.1054"}
    numbers = set(re.findall(r"\d\.\d{4}", text))
    assert stated <= numbers
    assert math.isclose(kl, 0.1 * math.log(0.5) + 0.6 * math.log(1.2), rel_tol=1e-12)
