"""`kdistill.distill`: the one-call path on real data (sklearn digits)."""

import torch
from torch.utils.data import DataLoader, TensorDataset

import kdistill
from kdistill import Distiller, create_model, distill, evaluate, fit
from kdistill.data import load_dataset
from kdistill.methods import scratch
from kdistill.training.acceleration import make_accelerator


def test_distill_one_call_trains_student_and_keeps_teacher():
    splits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", width=128, input_shape=(1, 8, 8))
    loader = DataLoader(splits.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(Distiller(teacher, scratch()), loader, epochs=5, accelerator=make_accelerator("cpu"), progress=False)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    student = create_model("mlp", width=16, input_shape=(1, 8, 8))
    # plain tensors and a dataset of (x, y) pairs both work
    x, y = splits.train.inputs, splits.train.targets
    val = TensorDataset(splits.val.inputs, splits.val.targets)
    result = distill(teacher, student, (x, y), val, temperature=4.0, alpha=0.9, epochs=8, lr=3e-3, progress=False)

    assert result.student is student
    assert len(result.history) == 8 and {"loss/ce", "loss/kd"} <= set(result.history[0])
    assert 0.8 < result.metrics["val/accuracy"] <= 1.0  # the student learned digits
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    test = evaluate(student, DataLoader(splits.test, batch_size=256))
    assert test["accuracy"] > 0.8


def test_public_api_is_explicit():
    for name in kdistill.__all__:
        assert hasattr(kdistill, name), name
    assert {"distill", "Distiller", "fit", "evaluate", "FeatureTap", "create_model", "list_models", "load_config"} <= set(kdistill.__all__)
