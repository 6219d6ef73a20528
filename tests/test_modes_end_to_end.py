"""Every teaching mode, end to end on digits: the run records its roles and their files in
``summary.json``; ``export`` and ``report`` work from those roles alone; the ``config.yaml``
the run wrote reloads to the same recipe (so rerun and ``--resume`` see the run they made)."""

import json

import pytest

from kdistill.deploy.run_export import export_run
from kdistill.report import render_run
from kdistill.run.config import load_config
from kdistill.run.pipeline import run

BASE = [
    "data.dataset=digits",
    "student.kwargs={width: 16}",
    "train.epochs=1",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]
TEACHER = [
    "teacher.model=mlp",
    "teacher.kwargs={width: 32}",
    "teacher.epochs=1",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
]
MODES = {
    "teacher": TEACHER,
    "cached": [*TEACHER, "teacher.cache=true"],
    "assistant": [*TEACHER, "assistant.model=mlp", "assistant.kwargs={width: 24}"],
    "ensemble": [
        "teachers=[{model: mlp, kwargs: {width: 32}, epochs: 1, augment: none},"
        " {model: mlp, kwargs: {width: 24}, epochs: 1, augment: none}]"
    ],
    "born_again": [*TEACHER, "distill.mode=born_again", "distill.generations=2"],
    "mutual": [*TEACHER, "distill.mode=mutual"],
}
EXPECTED_ROLES = {
    "teacher": {"teacher", "scratch", "student"},
    "cached": {"teacher", "scratch", "student"},
    "assistant": {"teacher", "assistant", "scratch", "student"},
    "ensemble": {"teacher", "scratch", "student"},
    "born_again": {"teacher", "scratch", "generation_1", "student"},
    "mutual": {"teacher", "scratch", "student"},
}


@pytest.mark.parametrize("mode", MODES)
def test_mode_runs_exports_and_reports_from_its_roles(mode, tmp_path):
    pytest.importorskip("onnxruntime", reason="export needs kdistill[export]")
    recipe = load_config(None, [*BASE, *MODES[mode], f"output.dir={tmp_path}", f"name={mode}"])
    summary = run(recipe, echo=lambda *_: None)
    run_dir = tmp_path / mode
    assert set(summary["roles"]) == EXPECTED_ROLES[mode]
    for role, record in summary["roles"].items():
        assert (run_dir / record["file"]).is_file(), (role, record)
        assert summary[role]["params"] > 0
    assert load_config(run_dir / "config.yaml").model_dump(mode="json") == recipe.model_dump(
        mode="json"
    )  # reruns (and --resume) read the same recipe

    result = export_run(run_dir, int8=False, repeats=3, echo=lambda *_: None)
    assert result["checks"]["student fp32"]["passed"]
    assert (run_dir / "export" / "student.onnx").is_file() and (
        run_dir / "export" / "teacher.onnx"
    ).is_file()
    report = render_run(run_dir)
    assert "Deployment" in report.read_text()
    assert json.loads((run_dir / "summary.json").read_text())["export"]["files"]["student"]


def test_resume_of_a_finished_ensemble_run_says_it_is_complete(tmp_path):
    recipe = load_config(None, [*BASE, *MODES["ensemble"], f"output.dir={tmp_path}", "name=ens"])
    run(recipe, echo=lambda *_: None)
    again = load_config(tmp_path / "ens" / "config.yaml")
    said = []
    summary = run(again, resume=True, echo=said.append)
    assert "already complete" in said[0] and summary["mode"] == "ensemble"
