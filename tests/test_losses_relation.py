"""Relation losses (SP, RKD, PKT, CC): golden values and gradients from the reference
implementations, their documented variants, and training properties."""

import pytest
import torch
import torch.nn.functional as F
from conftest import check_low_precision

from kdistill.losses import LOSSES, cc, pkt, rkd, sp


def tensor(entry, requires_grad=False):
    return torch.tensor(entry["data"], dtype=torch.float64, requires_grad=requires_grad)


GOLDEN = {
    "sp_repdistiller_4x8x4x4": sp,
    "sp_repdistiller_chanmismatch_s4x8x4x4_t4x16x4x4": sp,
    # torchdistill's normalize(G, 1) is p=1: a different value, reproduced by row_norm_p=1.
    "sp_torchdistill_SPKDLoss_batchmean_4x8x4x4": lambda s, t: sp(s, t, row_norm_p=1),
    "rkd_repdistiller_wd25_wa50_feat_4x8x4x4": rkd,
    "rkd_repdistiller_wd25_wa50_emb_s8x16_t8x32": rkd,
    "pkt_repdistiller_emb_s8x16_t8x32": pkt,
    "cc_repdistiller_emb_8x16": lambda s, t: cc(s, t, variant="repdistiller"),
    # The reference inputs are already unit vectors and torchdistill normalises outside the loss.
    "cckd_torchdistill_bilinear_batchmean_emb_8x16_l2n": lambda s, t: cc(
        s, t, variant="torchdistill", kernel="bilinear", normalize=False
    ),
    "cckd_torchdistill_gaussian_g0.4_p2_batchmean_emb_8x16_l2n": lambda s, t: cc(
        s, t, variant="torchdistill", kernel="gaussian", gamma=0.4, order=2, normalize=False
    ),
}


@pytest.mark.parametrize("case_id", list(GOLDEN))
def test_matches_reference_value_and_gradient(cases, case_id):
    case = cases[case_id]
    student = tensor(case["inputs"]["f_s"], requires_grad=True)
    teacher = tensor(case["inputs"]["f_t"])
    value = GOLDEN[case_id](student, teacher)
    assert value.dim() == 0  # RepDistiller's SP returns shape [1]; the value is the same
    value.backward()
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    expected = torch.tensor(case["grad"]["d_loss/d_f_s"]["data"], dtype=torch.float64)
    torch.testing.assert_close(student.grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "case_id",
    ["rkd_repdistiller_wd25_wa50_feat_4x8x4x4", "rkd_repdistiller_wd25_wa50_emb_s8x16_t8x32"],
)
def test_rkd_components(cases, case_id):
    case = cases[case_id]
    s, t = tensor(case["inputs"]["f_s"]), tensor(case["inputs"]["f_t"])
    components = case["output"]["components"]
    distance = rkd(s, t, distance_weight=1.0, angle_weight=0.0)
    angle = rkd(s, t, distance_weight=0.0, angle_weight=1.0)
    assert distance.item() == pytest.approx(components["distance_unweighted"]["value"], rel=1e-10)
    assert angle.item() == pytest.approx(components["angle_unweighted"]["value"], rel=1e-10)


def test_cc_paper_form_is_the_squared_norm_of_the_torchdistill_form(cases):
    case = cases["cckd_torchdistill_bilinear_batchmean_emb_8x16_l2n"]
    s, t = tensor(case["inputs"]["f_s"]), tensor(case["inputs"]["f_t"])
    n = len(s)
    for kernel in ("bilinear", "gaussian"):
        unsquared = cc(s, t, variant="torchdistill", kernel=kernel).item()
        assert cc(s, t, variant="paper", kernel=kernel).item() == pytest.approx(
            (unsquared * n**2) ** 2 / n**2, rel=1e-12
        )
    # The paper form's default normalises inside: the scale of an embedding does not matter.
    assert cc(3.0 * s, t).item() == pytest.approx(cc(s, t).item(), rel=1e-12)


def test_cc_gaussian_taylor_approaches_the_rbf_kernel():
    """For unit vectors exp(−γ‖x−y‖²) = exp(−2γ)·exp(2γ x·y); the order-P series converges to it."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    gamma = 0.4
    rbf = lambda v: torch.exp(-gamma * torch.cdist(v, v).pow(2))
    exact = (rbf(x) - rbf(y)).pow(2).sum() / 36
    assert cc(x, y, order=12).item() == pytest.approx(exact.item(), rel=1e-9)


def test_cc_repdistiller_variant_depends_on_batch_order():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    order = torch.randperm(8, generator=g)
    shuffled = cc(s[order], t[order], variant="repdistiller")
    assert abs(shuffled.item() - cc(s, t, variant="repdistiller").item()) > 1e-3
    # The kernel forms compare all pairs: a permutation of the batch changes nothing.
    assert cc(s[order], t[order]).item() == pytest.approx(cc(s, t).item(), rel=1e-5)
    with pytest.raises(ValueError, match="connector"):
        cc(s, torch.randn(8, 6), variant="repdistiller")
    with pytest.raises(ValueError, match="variant"):
        cc(s, t, variant="papr")


def embeddings(seed, shape=(8, 16), scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# Teacher widths differ from the student's where the loss allows it.
LOSS_CALLS = {
    "sp": (sp, (8, 32)),
    "sp_maps": (sp, (8, 4, 3, 3)),
    "rkd": (rkd, (8, 32)),
    "pkt": (pkt, (8, 32)),
    "cc_paper": (cc, (8, 32)),
    "cc_paper_bilinear": (lambda s, t: cc(s, t, kernel="bilinear"), (8, 32)),
    "cc_torchdistill": (lambda s, t: cc(s, t, variant="torchdistill"), (8, 32)),
    "cc_repdistiller": (lambda s, t: cc(s, t, variant="repdistiller"), (8, 16)),
}


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_zero_when_student_equals_teacher(name):
    loss_fn, _ = LOSS_CALLS[name]
    t = embeddings(1)
    assert loss_fn(t.clone(), t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_non_negative_and_gradient_reaches_student_never_teacher(name):
    loss_fn, teacher_shape = LOSS_CALLS[name]
    for seed in range(3):
        s = embeddings(seed).requires_grad_(True)
        t = embeddings(seed + 10, teacher_shape).requires_grad_(True)
        value = loss_fn(s, t)
        assert value.item() >= -1e-12  # PKT's eps inside the log can leave a rounding-size negative
        value.backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert t.grad is None


def test_gradient_reaches_a_connector():
    connector = torch.nn.Linear(16, 32)
    s, t = embeddings(2).float(), embeddings(3, (8, 32)).float()
    for loss_fn in (sp, rkd, pkt, cc, lambda a, b: cc(a, b, variant="repdistiller")):
        connector.zero_grad()
        loss_fn(connector(s), t).backward()
        assert connector.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_finite_for_large_features_in_low_precision(name, dtype):
    loss_fn, teacher_shape = LOSS_CALLS[name]
    s = embeddings(4, scale=1e3).to(dtype).requires_grad_(True)
    check_low_precision(loss_fn, s, embeddings(5, teacher_shape, scale=1e3).to(dtype))


def test_losses_table_names_the_relation_losses():
    assert (
        LOSSES["sp"] is sp and LOSSES["rkd"] is rkd and LOSSES["pkt"] is pkt and LOSSES["cc"] is cc
    )
