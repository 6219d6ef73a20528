"""Method presets through the whole `kdistill run` on a small slice of real data: layers come
from the models' stages, connectors and memory banks are sized by probing, every term is logged."""

import json

import pytest

from kdistill.cli import main
from kdistill.methods import PRESETS

QUICK = [
    "data.dataset=digits",
    "teacher.model=cnn",
    "teacher.kwargs={width: 16, depth: 2}",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "student.model=cnn_tiny",
    "student.kwargs={}",
    "teacher.epochs=1",
    "train.epochs=1",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]
IMAGE_METHODS = [
    "kd",
    "dkd",
    "dist",
    "lskd",
    "nkd",
    "fitnet",
    "at",
    "nst",
    "sp",
    "rkd",
    "pkt",
    "cc",
    "vid",
    "crd",
]


def test_every_image_method_is_a_preset():
    assert set(IMAGE_METHODS) <= set(PRESETS)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fitnet", "at", "crd", "dkd", "vid"])
def test_method_runs_end_to_end(method, tmp_path):
    assert (
        main(["run", *QUICK, f"method={method}", f"output.dir={tmp_path}", f"name={method}"]) == 0
    )
    records = [
        json.loads(l) for l in (tmp_path / method / "metrics.jsonl").read_text().splitlines()
    ]
    student = next(r for r in records if r["phase"] == "student")
    terms = [k for k in student if k.startswith("loss/")]
    assert len(terms) >= 1 and all(isinstance(student[k], float) for k in terms)
    assert student["loss"] == pytest.approx(sum(student[k] for k in terms), rel=1e-5)
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    assert summary["method"] == method and 0 <= summary["student"]["accuracy"] <= 1


def test_feature_method_on_models_without_stages_names_the_fix(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                *QUICK,
                "method=at",
                "student.model=mlp",
                "student.kwargs={width: 8}",
                f"output.dir={tmp_path}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method" in err
