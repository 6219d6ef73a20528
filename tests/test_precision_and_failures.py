"""Mixed precision as a recipe switch, and a loss that becomes NaN stopping the run clearly."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, Term, create_model, fit
from kdistill.cli import main
from kdistill.data import ArrayDataset
from kdistill.training.acceleration import make_accelerator
from kdistill.training.selection import NonFiniteLossError

QUICK = [
    "data.dataset=digits",
    "teacher.model=mlp",
    "teacher.kwargs={width: 64}",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "student.kwargs={width: 16}",
    "teacher.epochs=1",
    "train.epochs=1",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def test_bf16_run_on_cpu(tmp_path):
    assert (
        main(["run", *QUICK, "train.mixed_precision=bf16", f"output.dir={tmp_path}", "name=bf16"])
        == 0
    )
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["student"]["accuracy"] > 0.2  # it learned something in one epoch


def test_mixed_precision_no_is_read_as_the_word_not_yaml_false():
    from kdistill.training.settings import TrainConfig

    assert TrainConfig(mixed_precision=False).mixed_precision == "no"  # YAML 1.1's `no`
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision=True)


def test_fp16_without_gpu_is_a_user_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is valid here")
    assert main(["run", *QUICK, "train.mixed_precision=fp16", f"output.dir={tmp_path}"]) == 2
    assert "bf16" in capsys.readouterr().err


def test_nan_loss_stops_with_step_term_and_hint():
    def exploding(s_logits, t_logits):
        return s_logits.sum() * 0 + float("nan")

    data = ArrayDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    distiller = Distiller(
        create_model("mlp_tiny"), [Term("ce", "ce", teacher=None), Term("bad", exploding)]
    )
    with pytest.raises(NonFiniteLossError) as error:
        fit(
            distiller,
            DataLoader(data, batch_size=8),
            teacher=Teacher(create_model("mlp_tiny")),
            epochs=1,
            accelerator=make_accelerator("cpu"),
            progress=False,
        )
    message = str(error.value)
    assert "step 0" in message and "bad" in message and "lower train.lr" in message
    assert "ce" not in message.split("term(s)")[1].split(":")[0]  # only the term that went bad


def test_the_watch_names_the_first_bad_step_across_folds_and_the_sums_equal_step_by_step_adds():
    from kdistill.training.selection import FiniteWatch, TrainingProgress

    watch, state = FiniteWatch(every=0), TrainingProgress()
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(150, generator=generator)
    expected = torch.zeros((), dtype=torch.float32)
    for step, value in enumerate(losses):
        loss = torch.tensor(float("nan")) if step in (100, 120) else value
        out = {"loss": loss, "loss/kd": loss * 2, "loss/ce": value, "logits": torch.zeros(4, 3)}
        watch.observe(out, step)
        state.add(out, {"target": torch.zeros(4, dtype=torch.long)})
        if step < 100:
            expected = expected + value.float() * 4
        if step == 99:  # a read mid-fold (as the progress bar does) changes nothing
            assert state.mean("loss/ce") == pytest.approx(float(expected) / 400, rel=1e-6)
    with pytest.raises(NonFiniteLossError, match="step 100 in term.s. kd"):
        watch.check(epoch=1)
    assert torch.isnan(state.sums["loss"])
    assert state.seen == 600 and state.correct.tolist() == [600, 600]  # right, labelled
