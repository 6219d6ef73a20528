"""Stateful losses (VID, CRD): golden values and gradients with the reference module state,
the state itself (CRD's memory bank and normaliser), sizing from shapes, and training properties."""

import pytest
import torch

from kdistill.losses import LOSSES, STATEFUL_LOSSES, CRDLoss, VIDLoss


def tensor(entry, requires_grad=False):
    return torch.tensor(entry["data"], dtype=torch.float64, requires_grad=requires_grad)


def reference_vid(case) -> VIDLoss:
    hyper = case["hyperparameters"]
    module = VIDLoss(
        hyper["num_input_channels"],
        hyper["num_target_channels"],
        mid_channels=hyper["num_mid_channel"],
        init_pred_var=hyper["init_pred_var"],
        eps=hyper["eps"],
    ).double()
    # Same layout as RepDistiller's VIDLoss: regressor.{0,2,4}.weight and log_scale.
    module.load_state_dict({name: tensor(entry) for name, entry in case["module_state"].items()})
    return module


# RepDistiller's CRDLoss state → ours: embed_{s,t}.linear is a Linear head per side; memory_v1
# holds the student embeddings (it is updated with them), memory_v2 the teacher's. contrast.params
# is [K, T, Z_v1, Z_v2, momentum] (−1 = Z not set); here K, T and momentum are constructor
# arguments and Z lives in `normalizer` (0 = not set).
CRD_STATE_NAMES = {
    "embed_s.linear.weight": "embed_student.weight",
    "embed_s.linear.bias": "embed_student.bias",
    "embed_t.linear.weight": "embed_teacher.weight",
    "embed_t.linear.bias": "embed_teacher.bias",
    "contrast.memory_v1": "memory_student",
    "contrast.memory_v2": "memory_teacher",
}


def reference_crd(case) -> CRDLoss:
    hyper = case["hyperparameters"]
    module = CRDLoss(
        hyper["s_dim"],
        hyper["t_dim"],
        hyper["n_data"],
        feat_dim=hyper["feat_dim"],
        num_negatives=hyper["nce_k"],
        nce_temperature=hyper["nce_t"],
        momentum=hyper["nce_m"],
        eps=hyper["eps"],
    ).double()
    state = {ours: tensor(case["module_state"][theirs]) for theirs, ours in CRD_STATE_NAMES.items()}
    k, temperature, z_student, z_teacher, momentum = case["module_state"]["contrast.params"]["data"]
    assert (k, temperature, momentum) == (hyper["nce_k"], hyper["nce_t"], hyper["nce_m"])
    assert z_student < 0 and z_teacher < 0  # a fresh module: Z is set by the first call
    state["normalizer"] = torch.zeros(2, dtype=torch.float64)
    module.load_state_dict(state)
    return module


def crd_inputs(case, requires_grad=True):
    inputs = case["inputs"]
    return (
        tensor(inputs["f_s"], requires_grad),
        tensor(inputs["f_t"]),
        torch.tensor(inputs["idx"]["data"]),
        torch.tensor(inputs["contrast_idx"]["data"]),
    )


def assert_grad(case, grad):
    expected = torch.tensor(case["grad"]["d_loss/d_f_s"]["data"], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_vid_matches_repdistiller_with_its_weights(cases):
    case = cases["vid_repdistiller_4x8x4x4"]
    module = reference_vid(case)
    student, teacher = tensor(case["inputs"]["f_s"], True), tensor(case["inputs"]["f_t"])
    value = module(student, teacher)
    value.backward()
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    assert_grad(case, student.grad)


def test_vid_starts_at_the_initial_variance():
    module = VIDLoss(4, 6)
    variance = torch.nn.functional.softplus(module.log_scale) + module.eps
    torch.testing.assert_close(variance, torch.full((6,), 5.0))


def test_crd_first_call_matches_repdistiller_and_sets_z(cases):
    case = cases["crd_repdistiller_emb_s8x16_t8x32"]
    module = reference_crd(case)
    student, teacher, index, contrast_idx = crd_inputs(case)
    value = module(student, teacher, index=index, contrast_idx=contrast_idx)
    value.backward()
    assert value.item() == pytest.approx(case["output"]["value"], rel=1e-10)
    assert_grad(case, student.grad)
    z = case["normalization_constants_set_on_first_call"]
    assert module.normalizer.tolist() == pytest.approx(
        [z["Z_v1 (student side, out_s)"], z["Z_v2 (teacher side, out_t)"]], rel=1e-12
    )


def test_crd_is_stateful_memory_moves_and_z_stays(cases):
    case = cases["crd_repdistiller_emb_s8x16_t8x32"]
    module = reference_crd(case)
    student, teacher, index, contrast_idx = crd_inputs(case, requires_grad=False)
    memory_before = module.memory_student.clone()
    first = module(student, teacher, index=index, contrast_idx=contrast_idx)
    z_after_first = module.normalizer.clone()
    changed = (module.memory_student != memory_before).any(dim=1)
    assert changed[index].all() and not changed[~torch.isin(torch.arange(16), index)].any()
    torch.testing.assert_close(
        module.memory_student[index].norm(dim=1), torch.ones(8, dtype=torch.float64)
    )
    second = module(student, teacher, index=index, contrast_idx=contrast_idx)
    assert second.item() != pytest.approx(first.item(), rel=1e-6)  # the memory moved
    assert torch.equal(module.normalizer, z_after_first)  # Z was fixed by the first call
    module.eval()  # evaluation never writes the memory
    frozen = module.memory_teacher.clone()
    module(student, teacher, index=index)
    assert torch.equal(module.memory_teacher, frozen)


def test_crd_draws_negatives_among_the_other_samples():
    torch.manual_seed(0)
    module = CRDLoss(4, 6, num_samples=10, num_negatives=50, feat_dim=3)
    index = torch.tensor([0, 3, 9])
    drawn = module._draw_contrast_indices(index)
    assert drawn.shape == (3, 51)
    assert torch.equal(drawn[:, 0], index)
    assert ((drawn[:, 1:] >= 0) & (drawn[:, 1:] < 10)).all()
    assert (drawn[:, 1:] != index[:, None]).all()
    assert len(drawn[0, 1:].unique()) == 9  # every other sample can be drawn


def test_crd_from_shapes_and_its_errors():
    module = CRDLoss.from_shapes((2, 8, 3, 3), (2, 32), num_samples=100)
    assert module.embed_student.in_features == 72 and module.embed_teacher.in_features == 32
    assert module.num_negatives == 99 and module.memory_student.shape == (100, 128)
    assert CRDLoss.from_shapes((2, 8), (2, 8), num_samples=20000, feat_dim=2).num_negatives == 16384
    with pytest.raises(ValueError, match="num_samples"):
        CRDLoss.from_shapes((2, 8), (2, 8))
    with pytest.raises(ValueError, match="index"):
        module(torch.randn(2, 8, 3, 3), torch.randn(2, 32))
    with pytest.raises(ValueError, match="outside the memory bank"):
        module(torch.randn(2, 8, 3, 3), torch.randn(2, 32), index=torch.tensor([5, 100]))


def test_vid_from_shapes_takes_maps_and_vectors():
    maps = VIDLoss.from_shapes((2, 8, 7, 7), (2, 16, 7, 7), num_samples=50)
    assert maps.regressor[0].in_channels == 8 and maps.regressor[-1].out_channels == 16
    vectors = VIDLoss.from_shapes((2, 32), (2, 64), init_pred_var=2.0)
    value = vectors(torch.randn(4, 32), torch.randn(4, 64))
    assert value.dim() == 0 and torch.isfinite(value)
    with pytest.raises(ValueError, match="vid"):
        VIDLoss.from_shapes((2, 5, 8), (2, 5, 8))


def make(name):
    torch.manual_seed(0)
    if name == "vid":
        return VIDLoss(8, 16), (4, 8, 6, 6), (4, 16, 3, 3), {}
    return (
        CRDLoss(16, 32, num_samples=20, feat_dim=8),
        (4, 16),
        (4, 32),
        {"index": torch.tensor([1, 5, 7, 19])},
    )


@pytest.mark.parametrize("name", ["vid", "crd"])
def test_gradient_reaches_student_and_the_loss_parameters_never_teacher(name):
    module, s_shape, t_shape, extra = make(name)
    s = torch.randn(*s_shape, requires_grad=True)
    t = torch.randn(*t_shape, requires_grad=True)
    value = module(s, t, **extra)
    assert value.item() >= 0  # VID's ½·log σ² > 0 at σ² = 5; CRD's terms are −log of ratios < 1
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["vid", "crd"])
def test_finite_for_large_features_in_low_precision(name, dtype):
    module, s_shape, t_shape, extra = make(name)
    s = (torch.randn(*s_shape) * 1e3).to(dtype).requires_grad_(True)
    t = (torch.randn(*t_shape) * 1e3).to(dtype)
    value = module(s, t, **extra)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


def test_stateful_losses_are_looked_up_by_name():
    assert STATEFUL_LOSSES == {"vid": VIDLoss, "crd": CRDLoss}
    assert LOSSES["vid"] is VIDLoss and LOSSES["crd"] is CRDLoss
