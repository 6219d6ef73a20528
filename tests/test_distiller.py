"""Teacher stays frozen; Distiller returns the loss dict; fit trains only what should train."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller, ModelOutput, Teacher, Term, create_model, fit
from kdistill.data import ArrayDataset
from kdistill.methods import hinton_kd, preset_terms, scratch
from kdistill.training.acceleration import make_accelerator


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(n, 1, 28, 28, generator=g),
        "target": torch.randint(0, 10, (n,), generator=g),
        "index": torch.arange(n),
    }


def models():
    torch.manual_seed(0)
    return create_model("lenet"), create_model("mlp_tiny")


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher_model, _ = models()
    teacher = Teacher(teacher_model)
    assert not teacher_model.training
    assert all(not p.requires_grad for p in teacher_model.parameters())
    teacher_model.train()  # a user's stray .train() must not enable dropout in the teacher
    b = batch()
    first, second = teacher(b), teacher(b)
    assert not teacher_model.training
    torch.testing.assert_close(first.logits, second.logits)  # dropout off: deterministic
    assert first.logits.grad_fn is None and not first.logits.requires_grad
    assert not isinstance(teacher, nn.Module)  # cannot be registered inside the Distiller


def test_loss_dict_has_every_term_and_sums_to_total():
    teacher_model, student = models()
    distiller = Distiller(student, hinton_kd(temperature=4.0, alpha=0.9))
    b = batch()
    out = distiller(b, Teacher(teacher_model)(b))
    assert set(out) == {"loss", "logits", "loss/ce", "loss/kd"}
    torch.testing.assert_close(out["loss"], out["loss/ce"] + out["loss/kd"])
    expected_kd = (
        0.9
        * 16
        * F.kl_div(
            F.log_softmax(out["logits"] / 4, 1),
            F.softmax(teacher_model(b["input"]) / 4, 1),
            reduction="batchmean",
        )
    )
    torch.testing.assert_close(out["loss/kd"], expected_kd)
    torch.testing.assert_close(out["loss/ce"], 0.1 * F.cross_entropy(out["logits"], b["target"]))


def test_ce_plus_lambda_kl_is_expressible():
    terms = preset_terms("kd", alpha=0.5, ce_weight=1.0)
    assert [(t.name, t.weight) for t in terms] == [("ce", 1.0), ("kd", 0.5)]


def test_distillation_gradient_reaches_student_and_connector_not_teacher():
    teacher_model, student = models()
    terms = [
        Term("kd", "kd", params={"temperature": 2.0}),
        # student penultimate features (32) regressed onto the teacher's hidden layer (128)
        Term(
            "hint",
            lambda s, t: F.mse_loss(s, t),
            student="features",
            teacher="fc",
            connector="auto",
        ),
    ]
    teacher = Teacher(teacher_model, taps=["fc"])
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=batch())
    assert isinstance(distiller.connectors["hint"], nn.Linear)
    b = batch(seed=1)
    out = distiller(b, teacher(b))
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in distiller.connectors.parameters())
    assert all(p.grad is None for p in teacher_model.parameters())
    teacher_params = {id(p) for p in teacher_model.parameters()}
    assert not teacher_params & {id(p) for p in distiller.parameters()}


def test_warmup_ramps_the_weight():
    term = Term("kd", "kd", weight=8.0, warmup_epochs=20)
    assert [term.weight_at(e) for e in (1, 10, 20, 40)] == [0.4, 4.0, 8.0, 8.0]
    # A warm-up no run reaches, or that a float cannot hold (the fuzzer's 10**30 overflowed the
    # ramp inside the training step), is refused when the term is made.
    for wrong in (-1, 10**30, 2.5):
        with pytest.raises(ValueError, match="warmup_epochs must be a whole number"):
            Term("kd", "kd", warmup_epochs=wrong)


def test_terms_know_what_they_compare():
    ce = Term("ce", "ce")
    assert not ce.takes_teacher and ce.takes_target and ce.teacher is None
    kd = Term("kd", "kd")
    assert kd.takes_teacher and not kd.takes_target
    with pytest.raises(ValueError, match="did you mean kd"):
        Term("x", "kdd")
    assert not Distiller(create_model("mlp_tiny"), scratch()).needs_teacher
    with pytest.raises(ValueError, match="teacher_out"):
        Distiller(create_model("mlp_tiny"), hinton_kd())(batch())


def test_model_output_reads_logits_or_features():
    out = ModelOutput(torch.zeros(2, 3), {"layer": torch.ones(2, 4)})
    assert out.get("logits").shape == (2, 3) and out.get("layer").shape == (2, 4)


def test_fit_trains_student_and_leaves_teacher_untouched():
    teacher_model, student = models()
    teacher_model.train()  # BN running stats would move if the teacher ran in train mode
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student_before = [p.clone() for p in student.parameters()]
    data = ArrayDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    loader = DataLoader(
        data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    history = fit(
        Distiller(student, hinton_kd()),
        loader,
        teacher=Teacher(teacher_model),
        epochs=2,
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    for key, value in teacher_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"loss", "loss/ce", "loss/kd", "train/accuracy", "lr"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
