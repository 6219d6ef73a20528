"""The trainer's controls each change what happens: early stopping stops, keep=best restores the
best epoch, accumulation equals the larger batch, clipping bounds the update, warm-up shows in
the logged learning rate, norms and biases are not decayed, trackers write readable files."""

import json

import pytest
import torch
from conftest import TINY_RECIPE, call_cli, kdistill_cli
from torch.utils.data import DataLoader

from kdistill import Distiller, create_model
from kdistill.cli import main
from kdistill.data import ArrayDataset
from kdistill.distiller import Teacher
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.methods import Term
from kdistill.modeling import LazyLogits
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Checkpointing, Loop, train_loop
from kdistill.training.optimization import Optimization, parameter_groups
from kdistill.training.selection import EarlyStopping, best_weights_path


def data(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)
    )


def student(seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=4)


def ce():
    return [Term("ce", "ce", teacher=None)]


def train(model, batch_size=8, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("lr", 0.05)
    return train_loop(
        Distiller(model, ce()),
        DataLoader(data(), batch_size=batch_size),
        accelerator=make_accelerator("cpu"),
        progress=False,
        **kwargs,
    )


def scripted(scores, metric="accuracy"):
    """A validation whose ``metric`` per epoch is given: the best epoch is known in advance."""
    calls = []

    def evaluate_fn(model, loader, accelerator):
        calls.append(1)
        return {"accuracy": 0.5, metric: scores[len(calls) - 1], "n": 1}

    return evaluate_fn


def test_early_stopping_stops_a_plateau_before_the_last_epoch():
    history = train(
        student(),
        epochs=10,
        val_loader=DataLoader(data(16, 1), batch_size=16),
        loop=Loop(
            evaluate_fn=scripted([0.5, 0.6] + [0.6] * 8),
            early_stopping=EarlyStopping(patience=2, min_delta=0.01),
        ),
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["stopped_early"] and history[-1]["best_epoch"] == 2


def test_keep_best_restores_the_best_epochs_weights(tmp_path):
    model, snapshots = student(), {}

    def remember(record):
        snapshots[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    state = tmp_path / "student.state.safetensors"
    history = train(
        model,
        epochs=4,
        val_loader=DataLoader(data(16, 1), batch_size=16),
        log=remember,
        loop=Loop(evaluate_fn=scripted([0.5, 0.9, 0.6, 0.4]), keep="best"),
        checkpointing=Checkpointing(state),
    )
    assert [r["best_epoch"] for r in history] == [1, 2, 2, 2] and "stopped_early" not in history[-1]
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[2][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[4][k]) for k in final)
    assert best_weights_path(state).is_file()  # a resumed run still ends with the best epoch


def test_the_loss_metric_is_the_validation_loss_not_the_training_loss():
    """The epoch record holds the training ``loss`` (falling here) beside ``val/loss``."""
    history = train(
        student(),
        epochs=4,
        val_loader=DataLoader(data(16, 1), batch_size=16),
        loop=Loop(
            evaluate_fn=scripted([0.9, 0.5, 0.7, 0.8], "loss"),
            early_stopping=EarlyStopping("loss", patience=None),
        ),
    )
    assert history[-1]["loss"] < history[1]["loss"]  # the training loss was lowest later
    assert [r["best_epoch"] for r in history] == [1, 2, 2, 2]


def test_a_nan_validation_score_is_never_the_best_epoch():
    history = train(
        student(),
        epochs=4,
        val_loader=DataLoader(data(16, 1), batch_size=16),
        loop=Loop(
            evaluate_fn=scripted([float("nan"), 0.5, 0.7, 0.6]),
            keep="best",
            early_stopping=EarlyStopping(patience=2),
        ),
    )
    assert [r["best_epoch"] for r in history] == [0, 2, 3, 3] and "stopped_early" not in history[-1]


def test_selection_without_validation_is_refused():
    with pytest.raises(Exception, match="validation"):
        train(student(), loop=Loop(keep="best"))


def test_accumulation_equals_the_larger_batch():
    """In deterministic mode, two accumulated half batches give the larger batch's weights (up
    to float32 rounding of the two summation orders); the half batches alone do not."""
    sgd = {"optimizer": "sgd", "momentum": 0.0, "schedule": "constant"}
    large, accumulated, small = student(), student(), student()
    torch.use_deterministic_algorithms(True)
    try:
        train(large, batch_size=16, optim=Optimization(**sgd))
        train(accumulated, batch_size=8, optim=Optimization(**sgd, grad_accum=2))
        train(small, batch_size=8, optim=Optimization(**sgd))
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, c in zip(large.parameters(), accumulated.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not all(
        torch.allclose(a, c, atol=1e-4) for a, c in zip(large.parameters(), small.parameters())
    )


class TokenModel(torch.nn.Module):
    """A float64 next-token model that can give its logits lazily (the chunked token losses)."""

    supports_lazy_logits = True

    def __init__(self, seed, vocab=11, width=6):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)
        self.double()

    def forward(self, ids, lazy_logits=False):
        hidden = torch.tanh(self.embed(ids))
        if lazy_logits:
            return LazyLogits(hidden, self.head.weight, self.head.bias)
        return self.head(hidden)


def ragged_tokens(n=10, length=8, vocab=11):
    """Sequences whose counted tokens differ from batch to batch: padded tails (``mask``) and
    targets the data does not count (``IGNORE_INDEX``) at positions the mask counts, as an
    on-policy batch has them: ``token_ce`` and ``forward_kl`` count different tokens."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length + 1), generator=generator)
    mask = torch.arange(length) < torch.randint(1, length + 1, (n, 1), generator=generator)
    target = ids[:, 1:].masked_fill(torch.rand(n, length, generator=generator) < 0.3, IGNORE_INDEX)
    return [
        {"input": ids[i, :-1], "target": target[i], "mask": mask[i], "index": torch.tensor(i)}
        for i in range(n)
    ]


def accumulated(model, dataset, terms, batch_size, grad_accum, teacher=None):
    """``model``'s weights after 2 epochs of plain SGD, ``grad_accum`` batches per update."""
    train_loop(
        Distiller(model, terms),
        DataLoader(dataset, batch_size=batch_size),
        teacher=teacher,
        epochs=2,
        lr=0.5,
        optim=Optimization("sgd", momentum=0.0, schedule="constant", grad_accum=grad_accum),
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def test_a_short_last_window_equals_the_larger_batch_in_float64():
    """10 samples in batches of 2, 3 per update: windows of 6 and 4 samples, the same updates as
    batches of 6 (the last one 4); the short window is not divided by 3."""
    generator = torch.Generator().manual_seed(0)
    dataset = ArrayDataset(
        torch.randn(10, 1, 8, 8, generator=generator, dtype=torch.float64),
        torch.randint(0, 4, (10,), generator=generator),
    )
    large = accumulated(student().double(), dataset, ce(), batch_size=6, grad_accum=1)
    windows = accumulated(student().double(), dataset, ce(), batch_size=2, grad_accum=3)
    small = accumulated(student().double(), dataset, ce(), batch_size=2, grad_accum=1)
    assert (large - windows).abs().max() < 1e-10 and (large - small).abs().max() > 1e-3


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_ragged_token_counts_weigh_each_token_as_the_larger_batch_in_float64(chunk_size):
    """Each token term is a mean over its own counted tokens: an accumulated window weighs each
    batch by its share of the window's tokens (per term), so the update is the large batch's."""
    terms = [
        Term("ce", "token_ce", weight=0.5, teacher=None, chunk_size=chunk_size),
        Term("kd", "forward_kl", chunk_size=chunk_size),
    ]
    teacher, dataset = Teacher(TokenModel(seed=1)), ragged_tokens(12)  # full windows of 6
    large = accumulated(TokenModel(seed=0), dataset, terms, 6, grad_accum=1, teacher=teacher)
    windows = accumulated(TokenModel(seed=0), dataset, terms, 2, grad_accum=3, teacher=teacher)
    assert (large - windows).abs().max() < 1e-10


def update_norm(clip):
    model = student()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_loop(
        Distiller(model, ce()),
        DataLoader(data(8), batch_size=8),
        epochs=1,
        lr=1.0,
        optim=Optimization("sgd", momentum=0.0, schedule="constant", clip_grad_norm=clip),
        accelerator=make_accelerator("cpu"),
        progress=False,
    )
    return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()


def test_clipping_bounds_the_gradient_norm():
    # One SGD step at lr 1 moves the weights by exactly the (clipped) gradient.
    assert update_norm(None) > 0.05
    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)


def test_warmup_is_visible_in_the_logged_learning_rate():
    steps = []
    train(
        student(),
        lr=0.1,
        optim=Optimization(schedule="constant", warmup_steps=4),
        loop=Loop(log_every=1, log_step=steps.append),
    )
    assert [round(r["lr"], 6) for r in steps] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1]
    plain = []
    train(
        student(),
        lr=0.1,
        optim=Optimization(schedule="constant"),
        loop=Loop(log_every=1, log_step=plain.append),
    )
    assert {r["lr"] for r in plain} == {0.1}
    ratio = []
    train(
        student(),
        lr=0.1,
        optim=Optimization(schedule="cosine", warmup_ratio=0.5),
        loop=Loop(log_every=1, log_step=ratio.append),
    )
    assert [r["lr"] for r in ratio][:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_norms_and_biases_are_not_decayed(monkeypatch):
    from kdistill.training import loop as trainer

    made = []
    make = trainer.make_optimizer
    monkeypatch.setattr(
        trainer, "make_optimizer", lambda *a, **k: made.append(make(*a, **k)) or made[-1]
    )
    model = student()
    train(model, optim=Optimization("adamw", weight_decay=0.1))
    decay_of = {
        id(p): group["weight_decay"] for group in made[0].param_groups for p in group["params"]
    }
    for name, parameter in model.named_parameters():
        assert decay_of[id(parameter)] == (0.0 if name.endswith("bias") else 0.1), name
    resnet = create_model("resnet8", num_classes=10)
    groups = parameter_groups(resnet, 0.1)
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert any(
        "bn" in n or "norm" in n
        for n, p in resnet.named_parameters()
        if any(p is q for q in groups[1]["params"])
    )


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_takes_the_fused_kernel_with_the_same_update_and_falls_back_without_it(
    name, monkeypatch
):
    from kdistill.training import optimization

    def three_steps(make):
        model = student()
        optimizer = make(model.parameters())
        torch.manual_seed(1)
        for _ in range(3):
            model(torch.randn(8, 1, 8, 8)).square().mean().backward()
            optimizer.step()
        return optimizer, torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    made, fused = three_steps(
        lambda p: optimization.make_optimizer(p, name, lr=1e-2, weight_decay=0.1)
    )
    assert made.defaults["fused"] is True
    default = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    _, foreach = three_steps(lambda p: default(p, lr=1e-2, weight_decay=0.1, foreach=True))
    torch.testing.assert_close(fused, foreach, rtol=1e-5, atol=1e-6)

    def without_kernel(params, fused=None, **settings):
        if fused:
            raise RuntimeError(
                "`fused=True` requires all the params to be "
                "floating point Tensors of supported devices"
            )
        return default(params, **settings)

    monkeypatch.setattr(torch.optim, default.__name__, without_kernel)
    assert not optimization.make_optimizer(student().parameters(), name).defaults["fused"]


QUICK = [
    "data.dataset=digits",
    "teacher.model=mlp",
    "teacher.epochs=2",
    "train.epochs=4",
    "train.batch_size=64",
    "train.augment=none",
    "train.mix=none",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def test_a_run_keeps_the_best_epoch_of_each_student_and_writes_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = main(
        [
            "run",
            *QUICK,
            f"output.dir={tmp_path}",
            "name=controls",
            "train.keep=best",
            "train.early_stopping={patience: 1, min_delta: 0.5}",
            "output.report_to=[tensorboard]",
            "output.log_every=5",
        ]
    )
    assert code == 0
    run = tmp_path / "controls"
    summary = json.loads((run / "summary.json").read_text())
    for role in ("scratch", "student"):
        # min_delta 0.5 of accuracy is never beaten: the first epoch is best, training stops at 2.
        assert (
            summary[role]["best_epoch"] == 1
            and summary[role]["epochs_trained"] == 2
            and summary[role]["stopped_early"]
        )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    terms = {k for r in records if r["phase"] == "student" for k in r if k.startswith("loss/")}
    events = EventAccumulator(str(run / "tensorboard" / "student")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "samples_per_s", "val/accuracy", *terms} <= tags
    assert {f"step/{t}" for t in terms} <= tags
    assert [e.step for e in events.Scalars("loss")] == [
        r["step"] for r in records if r["phase"] == "student"
    ]


def test_a_missing_tracker_is_one_line_exit_2(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    if __import__("importlib").util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    assert main(["check", *QUICK, f"output.dir={tmp_path}", "output.report_to=[mlflow]"]) == 2
    assert "pip install mlflow" in capsys.readouterr().err


def test_latency_keeps_to_its_time_budget():
    """A model that takes one (simulated) second per pass: the budget allows two passes (the
    block-size estimate and one block), not minutes of blocks; a fast one fills its blocks."""
    from kdistill.deploy import latency

    clock = [0.0]
    calls = []

    def simulated(seconds):
        def one_pass():
            calls.append(1)
            clock[0] += seconds

        return one_pass

    slow = latency.time_call(simulated(1.0), min_run_time=0.2, budget_s=2.0, clock=lambda: clock[0])
    assert len(calls) == 2 and slow.median_ms == pytest.approx(1000.0)
    assert not slow.measurable  # one timed block says nothing about its spread
    calls.clear()
    fast = latency.time_call(simulated(1e-3), min_run_time=0.2, clock=lambda: clock[0])
    assert fast.median_ms == pytest.approx(1.0) and fast.blocks >= 100 and fast.measurable


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        ((2.0, 0.05, 40), (0.5, 0.02, 40), 4.0),  # both resolved and stable: their ratio
        ((2.0, 0.05, 40), (0.151, 0.12, 40), None),  # the student's IQR is most of its median
        ((2.0, 0.05, 40), (0.0, 0.0, 40), None),  # a zero median: below the timer's resolution
        ((2.0, 0.0, 1), (0.5, 0.02, 40), None),  # one block: no spread to judge
    ],
)
def test_a_latency_ratio_needs_two_resolved_stable_timings(teacher, student, expected):
    from kdistill.deploy.latency import Latency, latency_ratio
    from kdistill.report import ratio_text

    timings = (Latency(*timing, resolution_ms=1e-6) for timing in (teacher, student))
    ratio = latency_ratio(*timings)
    assert ratio == (None if expected is None else pytest.approx(expected))
    shown = "not measurable at this size" if expected is None else f"{expected:.1f}×"
    assert ratio_text(ratio) == shown


def test_a_real_small_measurement_is_complete():
    from kdistill.deploy.latency import measure_latency

    timing = measure_latency(student(), torch.zeros(1, 8, 8), batch_size=2, min_run_time=0.02)
    assert timing.median_ms > 0 and timing.iqr_ms >= 0 and timing.blocks >= 1
    assert timing.resolution_ms > 0
    assert isinstance(timing.measurable, bool)


def test_an_export_stands_alone_and_predict_reads_files(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from PIL import Image

    assert (
        main(
            [
                "run",
                *QUICK,
                "teacher.epochs=1",
                "train.epochs=1",
                "student.model=mlp",  # learns the digits in one epoch (data's choice: cnn_tiny)
                f"output.dir={tmp_path}",
                "name=e",
            ]
        )
        == 0
    )
    assert main(["export", str(tmp_path / "e"), "--repeats", "3", "--no-int8"]) == 0
    out = tmp_path / "e" / "export"
    props = {p.key: p.value for p in onnx.load(str(out / "student.onnx")).metadata_props}
    assert json.loads(props["kdistill.classes"]) == [str(c) for c in range(10)]
    spec = json.loads(props["kdistill.preprocessing"])
    assert spec["inputs"] == [{"name": "input", "shape": [1, 8, 8], "dtype": "float32"}] and set(
        spec["normalise"]
    ) == {"mean", "std"}
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    card = (out / "README.md").read_text()
    assert summary["method"] in card and f"{100 * summary['student']['accuracy']:.2f}%" in card

    # Test digits as files a user has: one CSV of rows (pixels 0..1) and the same digits as PNGs.
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = digits.data[:20] / 16.0
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",")
    images = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((rows[i].reshape(8, 8) * 255).round().astype(np.uint8), mode="L").save(path)
        images.append(str(path))
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "rows.csv"), *images]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 23
    predicted = [int(line[1]) for line in lines[:20]]
    assert (
        np.mean(np.array(predicted) == digits.target[:20]) >= 0.5
    )  # the trained student, not noise
    assert [line[1] for line in lines[20:]] == [line[1] for line in lines[:3]]  # PNG == its CSV row
    assert main(["predict", str(tmp_path), images[0]]) == 2


def test_token_inputs_export_with_a_dynamic_length(tmp_path):
    pytest.importorskip("onnxruntime")
    from kdistill.deploy.onnx import export_onnx, max_abs_diff, ort_session

    model = create_model("text_cnn", vocab_size=100, num_classes=2)
    batch = {
        "input_ids": torch.randint(1, 100, (4, 16)),
        "attention_mask": torch.ones(4, 16, dtype=torch.int64),
    }
    export_onnx(model, batch, tmp_path / "m.onnx")
    longer = {
        "input_ids": torch.randint(1, 100, (3, 40)),
        "attention_mask": torch.ones(3, 40, dtype=torch.int64),
    }
    assert max_abs_diff(model, ort_session(tmp_path / "m.onnx"), longer) < 1e-4


@pytest.mark.integration
def test_mlflow_and_tensorboard_write_inside_the_run_directory_and_overwrite_replaces_them(
    tmp_path,
):
    """The local MLflow store lives in the run directory (not a database in the user's current
    directory), holds one run per phase with every term, and --overwrite replaces it."""
    mlflow = pytest.importorskip(
        "mlflow", reason="pip install mlflow-skinny (kdistill[dev] has it)"
    )
    argv = [
        "run",
        *TINY_RECIPE,
        "train.epochs=2",
        "train.augment=none",
        "train.mix=none",
        "output.report_to=[mlflow, tensorboard]",
        "name=tracked",
    ]
    # Two processes, as a user runs them: MLflow keeps one database engine per process, and the
    # overwrite replaces that database's file.
    for extra in ([], ["--overwrite"]):
        result = kdistill_cli(*argv, *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the user's directory
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'tracked' / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    # The replaced run's phases only (the first run's three are gone; the teacher, trained by the
    # first run, is reused from the teacher store and not trained again).
    assert sorted(runs["tags.mlflow.runName"]) == ["scratch", "student"]
    assert {"metrics.loss/ce", "metrics.loss/kd", "metrics.val/accuracy", "metrics.lr"} <= set(
        runs.columns
    )


@pytest.mark.integration
def test_wandb_runs_offline_inside_the_run_directory_one_run_per_phase(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb (kdistill[dev] has it)")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = call_cli(
        "run",
        *TINY_RECIPE,
        "train.epochs=2",
        "train.augment=none",
        "train.mix=none",
        "output.report_to=[wandb]",
        "name=wb",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["runs"]
    offline = sorted((tmp_path / "runs" / "wb" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 3  # teacher, scratch, student: one W&B run each, never sent
    assert all(next(run.glob("*.wandb")).stat().st_size > 0 for run in offline)
