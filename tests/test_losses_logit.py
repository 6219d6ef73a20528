"""Logit losses beyond Hinton KD (DKD, DIST, NKD, logit standardisation): golden values and
gradients from the reference implementations, and the properties that make them safe to train."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import LOSSES, dist, dkd, kd, nkd, standardize_logits


def tensor(entry, requires_grad=False):
    return torch.tensor(entry["data"], dtype=torch.float64, requires_grad=requires_grad)


def run_case(case, loss_fn):
    """Evaluate ``loss_fn(student, teacher, [target])`` on a case's inputs; value and gradient."""
    names = list(case["inputs"])
    student = tensor(case["inputs"][names[0]], requires_grad=True)
    teacher = tensor(case["inputs"][names[1]])
    extra = [torch.tensor(case["inputs"][names[2]]["data"])] if len(names) > 2 else []
    value = loss_fn(student, teacher, *extra)
    value.sum().backward()
    expected_grad = torch.tensor(case["grad"][f"d_loss/d_{names[0]}"]["data"], dtype=torch.float64)
    return value, student.grad, expected_grad


DKD_CASES = ["dkd_mdistiller_a1_b8_T4_8x10", "dkd_mdistiller_a1_b8_T4_4x100"]


@pytest.mark.parametrize("case_id", DKD_CASES)
def test_dkd_matches_mdistiller_value_gradient_and_components(cases, case_id):
    case = cases[case_id]
    hyper = case["hyperparameters"]
    value, grad, expected = run_case(case, lambda s, t, y: dkd(s, t, y, **hyper))
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    components = case["output"]["components"]
    tckd, _, _ = run_case(case, lambda s, t, y: dkd(s, t, y, alpha=1.0, beta=0.0, temperature=4.0))
    nckd, _, _ = run_case(case, lambda s, t, y: dkd(s, t, y, alpha=0.0, beta=1.0, temperature=4.0))
    assert tckd.item() == pytest.approx(components["tckd"]["value"], rel=1e-10)
    assert nckd.item() == pytest.approx(components["nckd"]["value"], rel=1e-10)


def test_dist_matches_torchdistill_value_and_gradient(cases):
    case = cases["dist_torchdistill_tau1_8x10"]
    hyper = case["hyperparameters"]
    value, grad, expected = run_case(
        case,
        lambda s, t: dist(s, t, beta=hyper["beta"], gamma=hyper["gamma"], temperature=hyper["tau"]),
    )
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def logits(seed, shape=(16, 10), scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def labels(seed, n=16, classes=10):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_splits_into_tckd_plus_weighted_nckd(temperature):
    """Per sample, KD = TCKD + (1 − p_T[target]) ·
    NCKD (Zhao et al., Eq. 1); DKD drops the factor."""
    for i in range(4):
        s, t, y = logits(i, (1, 10)), logits(i + 10, (1, 10)), labels(i, 1)
        tckd = dkd(s, t, y, alpha=1.0, beta=0.0, temperature=temperature)
        nckd = dkd(s, t, y, alpha=0.0, beta=1.0, temperature=temperature)
        p_target = F.softmax(t / temperature, dim=1)[0, y[0]]
        expected = kd(s, t, temperature=temperature)
        assert (tckd + (1 - p_target) * nckd).item() == pytest.approx(expected.item(), rel=1e-12)


def test_standardize_is_off_by_default_and_matches_zscored_logits():
    s, t, y = logits(0), logits(1), labels(2)
    assert kd(s, t).item() == kd(s, t, standardize=False).item()
    z_s = (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-7)
    z_t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-7)
    torch.testing.assert_close(standardize_logits(s), z_s)
    assert kd(s, t, temperature=2.0, standardize=True).item() == pytest.approx(
        kd(z_s, z_t, temperature=2.0).item(), rel=1e-12
    )
    assert dkd(s, t, y, standardize=True).item() == pytest.approx(
        dkd(z_s, z_t, y).item(), rel=1e-12
    )


def test_standardized_kd_ignores_the_range_of_the_student_logits():
    """The point of Sun et al.: a student whose logits
    are 0.2·teacher + 3 is already a perfect match."""
    t, y = logits(3), labels(4)
    s = 0.2 * t + 3.0
    assert kd(s, t, standardize=True).item() == pytest.approx(0.0, abs=1e-10)
    assert dkd(s, t, y, standardize=True).item() == pytest.approx(0.0, abs=1e-10)
    assert kd(s, t).item() > 0.1  # plain KD insists on the teacher's logit range


def nkd_by_hand(s, t, y, temperature, gamma):
    """NKD written out per sample and per class, independently of the tensor implementation."""
    total = 0.0
    for i in range(len(s)):
        s_row, t_row, label = s[i].tolist(), t[i].tolist(), int(y[i])
        s_log_norm = math.log(sum(math.exp(v) for v in s_row))
        t_probs = [math.exp(v) / sum(math.exp(w) for w in t_row) for v in t_row]
        total += -t_probs[label] * (s_row[label] - s_log_norm)
        s_others = [v / temperature for c, v in enumerate(s_row) if c != label]
        t_others = [v / temperature for c, v in enumerate(t_row) if c != label]
        s_others_norm = math.log(sum(math.exp(v) for v in s_others))
        t_others_sum = sum(math.exp(v) for v in t_others)
        cross = -sum(
            math.exp(tv) / t_others_sum * (sv - s_others_norm) for sv, tv in zip(s_others, t_others)
        )
        total += gamma * temperature**2 * cross
    return total / len(s)


@pytest.mark.parametrize("temperature,gamma", [(1.0, 1.5), (2.0, 1.0)])
def test_nkd_matches_the_formula_of_the_authors_code(temperature, gamma):
    s, t, y = logits(5, (5, 7)), logits(6, (5, 7)), labels(7, 5, 7)
    value = nkd(s, t, y, temperature=temperature, gamma=gamma)
    assert value.item() == pytest.approx(nkd_by_hand(s, t, y, temperature, gamma), rel=1e-12)


def test_nkd_at_student_equal_teacher_only_pulls_the_target_class():
    """Its non-target part is a cross-entropy, minimal at q_S = q_T: at s = t the whole gradient
    is that of the target part, −p_T[y]·log p_S[y]."""
    t, y = logits(8), labels(9)
    s = t.clone().requires_grad_(True)
    nkd(s, t, y).backward()
    reference = t.clone().requires_grad_(True)
    p_target = F.softmax(t, 1).gather(1, y[:, None])
    (-(p_target * F.log_softmax(reference, 1).gather(1, y[:, None])).mean()).backward()
    torch.testing.assert_close(s.grad, reference.grad, rtol=1e-10, atol=1e-14)


# --- properties every logit loss must have ------------------------------------------------------

LOSS_CALLS = {
    "dkd": lambda s, t, y: dkd(s, t, y),
    "dist": lambda s, t, y: dist(s, t),
    "dist_tau4": lambda s, t, y: dist(s, t, beta=2.0, gamma=2.0, temperature=4.0),
    "nkd": lambda s, t, y: nkd(s, t, y),
    "lskd": lambda s, t, y: kd(s, t, temperature=2.0, standardize=True),
    "dkd_standardized": lambda s, t, y: dkd(s, t, y, standardize=True),
}
ZERO_WHEN_EQUAL = ["dkd", "dist", "dist_tau4", "lskd", "dkd_standardized"]  # NKD is a CE: not zero


@pytest.mark.parametrize("name", ZERO_WHEN_EQUAL)
def test_zero_when_student_equals_teacher(name):
    t, y = logits(10), labels(11)
    assert LOSS_CALLS[name](t.clone(), t, y).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_non_negative_and_gradient_reaches_student_never_teacher(name):
    for seed in range(3):
        s = logits(seed).requires_grad_(True)
        t = logits(seed + 20).requires_grad_(True)  # a teacher tensor that would accept a gradient
        value = LOSS_CALLS[name](s, t, labels(seed))
        assert value.item() >= 0
        value.backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert t.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_finite_for_large_logits_in_low_precision(name, dtype):
    """Logits of ±1000 (an over-confident teacher, an fp16 overflow waiting to happen): the loss
    and its gradient stay finite, and close to the float64 value."""
    s = (logits(12, scale=1.0) * 1e3).to(dtype).requires_grad_(True)
    t = (logits(13, scale=1.0) * 1e3).to(dtype)
    y = labels(14)
    value = LOSS_CALLS[name](s, t, y)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    reference = LOSS_CALLS[name](s.detach().double(), t.double(), y)
    assert value.item() == pytest.approx(reference.item(), rel=1e-2, abs=1e-3)


def test_losses_table_names_the_logit_losses():
    assert LOSSES["dkd"] is dkd and LOSSES["dist"] is dist and LOSSES["nkd"] is nkd
