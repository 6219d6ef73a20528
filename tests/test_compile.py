"""``train.compile``: Accelerate compiles each trained Distiller (student, connectors and terms in
one graph). The CPU tests use the ``aot_eager`` backend (the graph capture and its guards without
inductor's C++ build); bench/gpu_check.py runs inductor on a GPU."""

import json

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller, Term
from kdistill.data.base import ArrayDataset
from kdistill.distiller import Teacher
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import train_loop

QUICK = [
    "data.dataset=digits",
    "train.epochs=2",
    "teacher.epochs=1",
    "teacher.model=mlp",
    "student.model=mlp_tiny",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "output.latency=false",
    "output.plots=false",
]


def train(compile, epochs: int = 4):
    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 4, (96,))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    # A warm-up weight changes every epoch: read as a Python number it would recompile each one.
    terms = [
        Term("ce", "ce", teacher=None),
        Term("kd", "kd", weight=0.5, warmup_epochs=3, params={"temperature": 2.0}),
    ]
    loader = DataLoader(
        ArrayDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    history = train_loop(
        Distiller(student, terms),
        loader,
        teacher=Teacher(teacher),
        epochs=epochs,
        accelerator=make_accelerator("cpu", compile=compile),
        progress=False,
    )
    return [record["loss"] for record in history], dict(torch._dynamo.utils.counters["stats"])


def test_compiled_training_matches_eager_and_compiles_one_graph_for_every_epoch_of_a_warm_up():
    eager, eager_stats = train(False)
    compiled, stats = train("aot_eager")
    assert eager_stats.get("unique_graphs", 0) == 0  # nothing was compiled without the setting
    assert stats["unique_graphs"] == 1  # four epochs, three of them with a new warm-up weight
    assert compiled == pytest.approx(eager, rel=1e-6)


def test_the_distillers_epoch_is_a_tensor_the_warm_up_reads_without_a_python_branch():
    distiller = Distiller(nn.Linear(4, 2), [Term("kd", "kd", weight=8.0, warmup_epochs=20)])
    distiller.epoch = 10
    assert distiller.epoch == 10
    assert distiller.terms[0].weight_at(distiller._epoch).item() == pytest.approx(4.0)
    assert "_epoch" not in distiller.state_dict()  # checkpoints are unchanged


@pytest.mark.integration
def test_a_recipe_trains_compiled_and_a_bad_backend_is_one_line(tmp_path, cli):
    run = cli("run", *QUICK, "train.compile=aot_eager", "name=compiled", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "runs" / "compiled" / "summary.json").read_text())
    assert summary["student"]["accuracy"] > 0.5
    bad = cli("check", *QUICK, "train.compile=tensorrtx", cwd=tmp_path)
    assert (
        bad.returncode == 2
        and "train.compile" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
