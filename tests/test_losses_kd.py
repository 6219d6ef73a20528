"""Hinton KD and cross-entropy: golden values from the reference implementations, and the
properties whose violation has burned users of other tools."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import LOSSES, cross_entropy, kd

KD_CASES = [
    "kd_repdistiller_DistillKL_T4_8x10",
    "kd_mdistiller_kd_loss_T4_8x10",
    "kd_repdistiller_DistillKL_T4_4x100",
    "kd_mdistiller_kd_loss_T4_4x100",
]


def tensor(entry, requires_grad=False):
    return torch.tensor(entry["data"], dtype=torch.float64, requires_grad=requires_grad)


@pytest.mark.parametrize("case_id", KD_CASES)
def test_kd_matches_reference_value_and_gradient(cases, case_id):
    case = cases[case_id]
    s_name, t_name = list(case["inputs"])
    student = tensor(case["inputs"][s_name], requires_grad=True)
    teacher = tensor(case["inputs"][t_name])
    temperature = case["hyperparameters"].get("T", case["hyperparameters"].get("temperature"))
    loss = kd(student, teacher, temperature=temperature)
    loss.backward()
    assert loss.item() == pytest.approx(case["output"]["value"], rel=1e-12)
    expected_grad = torch.tensor(case["grad"][f"d_loss/d_{s_name}"]["data"], dtype=torch.float64)
    torch.testing.assert_close(student.grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_ce_plus_kd_matches_torchdistill_combined_loss(cases):
    # torchdistill KDLoss(alpha=0.5): 0.5·CE(y_s, target) + 0.5·T²·KL: two weighted terms here.
    case = cases["kd_torchdistill_KDLoss_T4_alpha0.5_8x10"]
    student = tensor(case["inputs"]["y_s"])
    teacher = tensor(case["inputs"]["y_t"])
    target = torch.tensor(case["inputs"]["targets"]["data"])
    value = 0.5 * cross_entropy(student, target) + 0.5 * kd(student, teacher, temperature=4.0)
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-12)
    assert cross_entropy(student, target).item() == pytest.approx(
        case["output"]["components"]["ce"]["value"], rel=1e-12
    )


def test_worked_example_numbers(reference):
    """docs/hinton.md: p_T = [0.1, 0.6, 0.3], p_S = [0.2, 0.5, 0.3], true class 1."""
    p_teacher = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    p_student = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    # Log-probabilities are valid logits: softmax(log p) = p, so T=1 KD is the plain KL.
    ce = cross_entropy(p_student.log(), torch.tensor([1]))
    kl = kd(p_student.log(), p_teacher.log(), temperature=1.0)
    assert ce.item() == pytest.approx(0.6931, abs=5e-5)
    assert kl.item() == pytest.approx(0.0401, abs=5e-5)
    assert kl.item() == pytest.approx(0.1 * math.log(0.5) + 0.6 * math.log(1.2), rel=1e-12)
    worked = reference["worked_examples"]
    assert ce.item() == pytest.approx(worked["cross_entropy"]["value"], rel=1e-12)
    assert kl.item() == pytest.approx(worked["kl_teacher_student"]["value"], rel=1e-12)


def logits(seed, shape=(16, 10), scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def test_kd_direction_is_teacher_to_student():
    s, t = logits(0), logits(1)
    forward = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    reverse = F.kl_div(F.log_softmax(t / 2, 1), F.softmax(s / 2, 1), reduction="batchmean") * 4
    value = kd(s, t, temperature=2.0)
    assert value.item() == pytest.approx(forward.item(), rel=1e-12)
    assert abs(value.item() - reverse.item()) > 1e-3  # the two directions differ on these inputs


def test_kd_is_batch_mean_not_element_mean():
    s, t = logits(2), logits(3)
    per_sample = torch.stack(
        [kd(s[i : i + 1], t[i : i + 1], temperature=4.0) for i in range(len(s))]
    )
    assert kd(s, t, temperature=4.0).item() == pytest.approx(per_sample.mean().item(), rel=1e-12)
    with pytest.warns(UserWarning):  # torch itself warns that 'mean' is not the KL
        wrong = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="mean") * 16
    assert kd(s, t).item() == pytest.approx(10 * wrong.item(), rel=1e-12)  # 'mean' divides by C too


def test_kd_zero_when_equal_and_positive_otherwise():
    s = logits(4)
    assert kd(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert kd(s, s + 5.0).item() == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift
    for seed in range(5):
        assert kd(logits(seed), logits(seed + 10)).item() > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_kd_gradient_is_t_squared_scaled(temperature):
    """d/ds T²·KL = (T/N)(p_S − p_T): the T² keeps gradients at the scale of the CE's."""
    s = logits(5).requires_grad_(True)
    t = logits(6)
    kd(s, t, temperature=temperature).backward()
    expected = (temperature / len(s)) * (
        F.softmax(s / temperature, 1) - F.softmax(t / temperature, 1)
    )
    torch.testing.assert_close(s.grad, expected.detach(), rtol=1e-10, atol=1e-14)


def test_kd_gradient_reaches_student_never_teacher():
    s = logits(7).requires_grad_(True)
    t = logits(8).requires_grad_(True)
    kd(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # A teacher tensor that requires grad (a user's own unfrozen model, a mutual-learning peer)
    # is still read as a constant.
    assert t.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kd_finite_for_large_logits_in_low_precision(dtype):
    s = (logits(9, scale=1.0) * 1e3).to(dtype).requires_grad_(True)
    t = (logits(10, scale=1.0) * 1e3).to(dtype)
    value = kd(s, t, temperature=4.0)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(s.grad).all()
    reference = kd(s.detach().double(), t.double(), temperature=4.0)
    assert value.item() == pytest.approx(reference.item(), rel=1e-2)


def test_losses_table_names_functions():
    assert LOSSES["kd"] is kd
    assert LOSSES["ce"] is cross_entropy
