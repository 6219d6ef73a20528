"""Presets and stateful terms end to end: every preset builds a Distiller on small zoo models,
its distillation terms send gradient to the student (and to connectors and loss modules) and
never to the teacher; a few train for an epoch."""

import pytest
import torch
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, Term, create_model, fit
from kdistill.data import ArrayDataset
from kdistill.losses import CRDLoss, VIDLoss
from kdistill.methods import (
    PRESETS,
    UnknownSettingError,
    describe_method,
    preset_terms,
    teacher_taps,
)
from kdistill.training.acceleration import make_accelerator

NUM_SAMPLES = 32
LOGIT_PRESETS = ["kd", "dkd", "dist", "lskd", "nkd"]
FEATURE_PRESETS = ["fitnet", "at", "nst", "sp", "vid"]
RELATION_PRESETS = ["rkd", "pkt", "cc", "crd"]


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(n, 1, 28, 28, generator=g),
        "target": torch.randint(0, 10, (n,), generator=g),
        "index": torch.randperm(NUM_SAMPLES, generator=g)[:n],
    }


def setup(method: str, **hyper):
    """Teacher ``lenet``; student ``cnn_small`` for feature maps, ``mlp_tiny`` otherwise."""
    torch.manual_seed(0)
    teacher_model = create_model("lenet")
    student = create_model("cnn_small" if method in FEATURE_PRESETS else "mlp_tiny")
    if method in FEATURE_PRESETS:
        hyper = {
            "student_layers": student.hint_layers,
            "teacher_layers": teacher_model.hint_layers,
            **hyper,
        }
    terms = preset_terms(method, **hyper)
    teacher = Teacher(teacher_model, taps=teacher_taps(terms))
    distiller = Distiller.build(
        student, terms, teacher=teacher, example_batch=batch(), num_samples=NUM_SAMPLES
    )
    return distiller, teacher, student, teacher_model


def test_the_method_library_is_registered():
    assert {*LOGIT_PRESETS, *FEATURE_PRESETS, *RELATION_PRESETS, "scratch"} <= set(PRESETS)


@pytest.mark.parametrize("method", [*LOGIT_PRESETS, *FEATURE_PRESETS, *RELATION_PRESETS])
def test_preset_distills_into_the_student_never_the_teacher(method):
    distiller, teacher, student, teacher_model = setup(method)
    b = batch(seed=1)
    out = distiller(b, teacher(b))
    names = [term.name for term in distiller.terms]
    assert set(out) == {"loss", "logits", *(f"loss/{name}" for name in names)}
    torch.testing.assert_close(out["loss"], sum(out[f"loss/{name}"] for name in names))
    # The distillation terms alone, without the cross-entropy on the labels.
    distillation = [name for name in names if name != "ce"]
    assert distillation
    sum(out[f"loss/{name}"] for name in distillation).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    trained_extras = [*distiller.connectors.parameters(), *distiller.loss_modules.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained_extras)
    assert all(p.grad is None for p in teacher_model.parameters())
    assert not {id(p) for p in teacher_model.parameters()} & {id(p) for p in distiller.parameters()}


def test_presets_use_the_published_weights():
    def weights(method, **hyper):
        return {t.name: t.weight for t in preset_terms(method, **hyper)}

    layers = {"student_layers": ["a", "b"], "teacher_layers": ["c", "d"]}
    assert weights("kd") == {"ce": pytest.approx(0.1), "kd": 0.9}
    assert weights("dkd") == {"ce": 1.0, "dkd": 1.0}
    assert weights("lskd") == {"ce": 0.1, "kd": 9.0}
    assert weights("at", **layers) == {"ce": 1.0, "at_0": 1000.0, "at_1": 1000.0}
    assert weights("sp", student_layers=["a"], teacher_layers=["c"]) == {"ce": 1.0, "sp": 3000.0}
    assert weights("fitnet", **layers)["hint_0"] == 100.0
    assert weights("nst", **layers)["nst_1"] == 50.0
    assert weights("vid", **layers)["vid_0"] == 1.0
    assert weights("rkd") == {"ce": 1.0, "rkd": 1.0}
    assert weights("pkt")["pkt"] == 30000.0
    assert weights("cc")["cc"] == 0.02
    assert weights("crd") == {"ce": 1.0, "crd": 0.8}
    assert weights("crd", kd_weight=1.0) == {"ce": 1.0, "kd": 1.0, "crd": 0.8}  # CRD+KD
    (dkd,) = [t for t in preset_terms("dkd") if t.name == "dkd"]
    assert dkd.warmup_epochs == 20 and dkd.params == {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "standardize": False,
    }
    (rkd,) = [t for t in preset_terms("rkd") if t.name == "rkd"]
    assert (rkd.student, rkd.teacher) == ("head:input", "head:input")
    assert rkd.params == {"distance_weight": 25.0, "angle_weight": 50.0}


def test_alpha_is_every_presets_distillation_weight_and_unknown_settings_are_refused():
    # The recipe's alpha weighs the distillation term; DKD's own α (tckd_weight) is another setting.
    (dkd,) = [t for t in preset_terms("dkd", temperature=2.0, alpha=0.9) if t.name == "dkd"]
    assert dkd.params["temperature"] == 2.0 and dkd.params["alpha"] == 1.0 and dkd.weight == 0.9
    at = preset_terms("at", student_layers=["x"], teacher_layers=["y"], alpha=0.5)
    assert [(t.name, t.weight) for t in at] == [("ce", 1.0), ("at", 0.5)]
    with pytest.raises(UnknownSettingError, match="'temprature'.*did you mean 'temperature'"):
        preset_terms("kd", temprature=1.0)
    with pytest.raises(UnknownSettingError, match="no setting 'temperature'"):
        preset_terms("scratch", temperature=2.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preset_terms("kd", alpha=1.5)
    assert [t.weight for t in preset_terms("kd", alpha=1.5, ce_weight=1.0)] == [
        1.0,
        1.5,
    ]  # CE + λ·KD


@pytest.mark.parametrize("method", FEATURE_PRESETS)
def test_feature_presets_explain_missing_or_unpaired_layers(method):
    with pytest.raises(ValueError, match="student_layers= and teacher_layers="):
        preset_terms(method)
    with pytest.raises(ValueError, match="pairwise"):
        preset_terms(method, student_layers=["a", "b"], teacher_layers=["c"])


@pytest.mark.parametrize("method", [*LOGIT_PRESETS, *FEATURE_PRESETS, *RELATION_PRESETS, "scratch"])
def test_every_preset_describes_itself_in_one_line(method):
    line = describe_method(method)
    assert 20 < len(line) <= 100 and not line.endswith((",", "the", "and"))


def test_stateful_term_by_name_is_built_from_the_probed_shapes():
    torch.manual_seed(0)
    teacher_model, student = create_model("lenet"), create_model("cnn_small")
    terms = [
        Term("ce", "ce", teacher=None),
        Term("vid", "vid", student="stages.1", teacher="stages.1", params={"init_pred_var": 3.0}),
        Term("crd", CRDLoss, student="stages.1", teacher="head:input", params={"feat_dim": 16}),
    ]
    assert terms[1].needs_build and terms[2].needs_build and terms[2].takes_index
    with pytest.raises(ValueError, match="Distiller.build"):
        Distiller(student, terms)
    teacher = Teacher(teacher_model, taps=teacher_taps(terms))
    with pytest.raises(ValueError, match="num_samples"):
        Distiller.build(student, terms, teacher=teacher, example_batch=batch())
    distiller = Distiller.build(
        student, terms, teacher=teacher, example_batch=batch(), num_samples=NUM_SAMPLES
    )
    vid, crd = distiller.loss_modules["vid"], distiller.loss_modules["crd"]
    assert (
        isinstance(vid, VIDLoss)
        and vid.regressor[0].in_channels == 32
        and vid.regressor[-1].out_channels == 64
    )
    assert isinstance(crd, CRDLoss) and crd.embed_student.in_features == 32 * 7 * 7
    assert crd.embed_teacher.in_features == 128 and crd.memory_student.shape == (NUM_SAMPLES, 16)
    assert terms[1].needs_build  # the caller's terms are left as they were
    assert {id(p) for p in vid.parameters()} <= {id(p) for p in distiller.parameters()}


@pytest.mark.parametrize("method", ["dkd", "at", "vid", "crd"])
def test_one_epoch_of_training_logs_every_term(method):
    distiller, teacher, student, teacher_model = setup(method)
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(
        torch.randn(NUM_SAMPLES, 1, 28, 28, generator=g),
        torch.randint(0, 10, (NUM_SAMPLES,), generator=g),
    )
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=g)
    teacher_before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    history = fit(
        distiller,
        loader,
        teacher=teacher,
        epochs=1,
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    record = history[0]
    assert {f"loss/{term.name}" for term in distiller.terms} <= set(record)
    assert all(
        torch.isfinite(torch.tensor(record[f"loss/{term.name}"])) for term in distiller.terms
    )
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher_model.state_dict().items())
    if method == "crd":
        assert (distiller.loss_modules["crd"].normalizer > 0).all()
