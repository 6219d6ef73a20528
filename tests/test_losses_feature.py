"""Feature losses (FitNet hint, attention transfer, NST): golden values and gradients from the
reference implementations, the documented code/paper difference of AT, and training properties."""

import pytest
import torch
import torch.nn.functional as F
from conftest import check_low_precision

from kdistill.losses import LOSSES, at, hint, nst


def tensor(entry, requires_grad=False):
    return torch.tensor(entry["data"], dtype=torch.float64, requires_grad=requires_grad)


GOLDEN = {
    "fitnet_hint_repdistiller_4x8x4x4": hint,
    "at_repdistiller_p2_4x8x4x4": at,
    "at_repdistiller_p2_chanmismatch_s4x8x4x4_t4x16x4x4": at,
    "at_repdistiller_p2_spatialmismatch_s4x8x8x8_t4x8x4x4": at,
    "at_torchdistill_paper_mode_4x8x4x4": lambda s, t: at(s, t, mode="paper"),
    "nst_repdistiller_4x8x4x4": nst,
    "nst_repdistiller_chanmismatch_s4x8x4x4_t4x16x4x4": nst,
    "nst_repdistiller_spatialmismatch_s4x8x8x8_t4x8x4x4": nst,
}


@pytest.mark.parametrize("case_id", list(GOLDEN))
def test_matches_reference_value_and_gradient(cases, case_id):
    case = cases[case_id]
    student = tensor(case["inputs"]["f_s"], requires_grad=True)
    teacher = tensor(case["inputs"]["f_t"])
    value = GOLDEN[case_id](student, teacher)
    value.backward()
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    expected = torch.tensor(case["grad"]["d_loss/d_f_s"]["data"], dtype=torch.float64)
    torch.testing.assert_close(student.grad, expected, rtol=1e-10, atol=1e-14)


def test_at_code_and_paper_modes_differ_as_documented(cases):
    """Code: squared differences averaged over N·H·W;
    paper: un-squared per-sample L2, batch mean."""
    case = cases["at_repdistiller_p2_4x8x4x4"]
    s, t = tensor(case["inputs"]["f_s"]), tensor(case["inputs"]["f_t"])
    a_s = F.normalize(s.pow(2).sum(1).flatten(1), dim=1)
    a_t = F.normalize(t.pow(2).sum(1).flatten(1), dim=1)
    assert at(s, t).item() == pytest.approx((a_s - a_t).pow(2).mean().item(), rel=1e-12)
    assert at(s, t, mode="paper").item() == pytest.approx(
        (a_s - a_t).norm(dim=1).mean().item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="mode"):
        at(s, t, mode="papr")


def test_at_pools_non_square_maps_to_the_common_size():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 8, 6, generator=g), torch.randn(2, 6, 4, 3, generator=g)
    expected = at(F.adaptive_avg_pool2d(s, (4, 3)), t)
    assert at(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hint_and_at_explain_shape_errors():
    with pytest.raises(ValueError, match="connector"):
        hint(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        at(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        nst(torch.randn(2, 8), torch.randn(2, 8, 4, 4))


def features(seed, shape=(4, 8, 6, 6), scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# Teacher shapes differ from the student's where the loss allows it.
LOSS_CALLS = {
    "hint": (hint, (4, 8, 6, 6)),
    "at": (at, (4, 16, 3, 3)),
    "at_paper": (lambda s, t: at(s, t, mode="paper"), (4, 16, 6, 6)),
    "nst": (nst, (4, 16, 3, 3)),
}


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_zero_when_student_equals_teacher(name):
    loss_fn, _ = LOSS_CALLS[name]
    t = features(1)
    assert loss_fn(t.clone(), t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_non_negative_and_gradient_reaches_student_never_teacher(name):
    loss_fn, teacher_shape = LOSS_CALLS[name]
    for seed in range(3):
        s = features(seed).requires_grad_(True)
        t = features(seed + 10, teacher_shape).requires_grad_(True)
        value = loss_fn(s, t)
        assert value.item() >= 0
        value.backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert t.grad is None


def test_gradient_reaches_a_connector():
    connector = torch.nn.Conv2d(8, 16, 1)
    s, t = features(2), features(3, (4, 16, 6, 6))
    for loss_fn in (hint, at, nst):
        connector.zero_grad()
        loss_fn(connector(s.float()), t.float()).backward()
        assert connector.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_finite_for_large_features_in_low_precision(name, dtype):
    loss_fn, teacher_shape = LOSS_CALLS[name]
    s = features(4, scale=1e3).to(dtype).requires_grad_(True)
    check_low_precision(loss_fn, s, features(5, teacher_shape, scale=1e3).to(dtype))


def test_losses_table_names_the_feature_losses():
    assert LOSSES["hint"] is hint and LOSSES["at"] is at and LOSSES["nst"] is nst
