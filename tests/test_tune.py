"""`kdistill tune`: trials are runs, the study is resumable (a second call adds trials to the
same SQLite study), the objective is the validation score, and best.yaml is a recipe `kdistill
run` accepts."""

import csv
import json

import pytest
import yaml

pytest.importorskip(
    "optuna", reason="the tune extra is not installed: pip install 'kdistill[tune]'"
)

from kdistill.cli import main
from kdistill.methods import PRESETS
from kdistill.run.config import load_config
from kdistill.run.tune import logit_methods, validation_score

TINY = [
    "data.subset=300",
    "teacher.epochs=1",
    "train.epochs=1",
    "train.batch_size=32",
    "student.kwargs.width=32",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two trials over two candidate teachers (a zoo name and a YAML section), then one more."""
    root = tmp_path_factory.mktemp("tune")
    teacher_file = root / "small_cnn.yaml"
    teacher_file.write_text(yaml.safe_dump({"teacher": {"model": "cnn_tiny", "epochs": 1}}))
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "toy", "output": {"dir": str(root)}}))
    first = main(
        [
            "tune",
            str(recipe),
            *TINY,
            "--trials",
            "2",
            "--teachers",
            f"mlp_tiny,{teacher_file}",
            "--methods",
            "kd,dkd",
        ]
    )
    assert first == 0
    tune_dir = root / "toy-tune"
    after_first = list(csv.DictReader((tune_dir / "trials.csv").open()))
    second = main(
        ["tune", str(recipe), *TINY, "--trials", "1"]
    )  # resumes: same recipe, no --teachers
    assert second == 0
    return root, recipe, tune_dir, after_first


@pytest.mark.integration
def test_second_call_adds_trials_to_the_same_study(study):
    _, _, tune_dir, after_first = study
    assert (tune_dir / "study.db").is_file()
    rows = list(csv.DictReader((tune_dir / "trials.csv").open()))
    assert len(after_first) == 2 and len(rows) == 3
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["state"] == "complete" for r in rows)
    for r in rows:
        assert (tune_dir / f"trial-{r['trial']}" / "summary.json").is_file()
        assert r["method"] in ("kd", "dkd") and r["teacher"] in ("mlp_tiny", "small_cnn")
        assert 1.0 <= float(r["temperature"]) <= 10.0 and 0.1 <= float(r["alpha"]) <= 1.0
    # The first trials are the recipe as written (kd at its published T=4, alpha=0.9), once per
    # teacher.
    written = [
        (r["method"], r["teacher"], float(r["temperature"]), float(r["alpha"])) for r in rows[:2]
    ]
    assert written == [("kd", "mlp_tiny", 4.0, 0.9), ("kd", "small_cnn", 4.0, 0.9)]


@pytest.mark.integration
def test_objective_is_the_validation_score_never_the_test_score(study):
    _, _, tune_dir, _ = study
    for r in csv.DictReader((tune_dir / "trials.csv").open()):
        run_dir = tune_dir / r["run_dir"]
        assert float(r["val_accuracy"]) == pytest.approx(validation_score(run_dir, "accuracy"))
    table = (tune_dir / "trials.md").read_text()
    assert "validation accuracy" in table and "test" not in table.replace(
        "test split is not used", ""
    )
    assert "## Teachers" in table and "small_cnn" in table


@pytest.mark.integration
def test_best_yaml_is_a_runnable_recipe_with_the_best_trial(study):
    root, _, tune_dir, _ = study
    rows = list(csv.DictReader((tune_dir / "trials.csv").open()))
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    recipe = load_config(tune_dir / "best.yaml")
    assert recipe.name == "toy-tuned" and recipe.output.dir == str(root)
    assert recipe.method == best["method"]
    assert recipe.distill.temperature == pytest.approx(float(best["temperature"]))
    assert recipe.distill.alpha == pytest.approx(float(best["alpha"]))
    assert (
        recipe.teacher.model == {"mlp_tiny": "mlp_tiny", "small_cnn": "cnn_tiny"}[best["teacher"]]
    )
    assert recipe.data.subset == 300 and recipe.train.epochs == 1  # the overrides are kept
    assert f"trial {best['trial']}" in (tune_dir / "best.yaml").read_text().splitlines()[0]


@pytest.mark.integration
def test_teachers_are_trained_once_and_reused(study):
    _, _, tune_dir, _ = study
    rows = list(csv.DictReader((tune_dir / "trials.csv").open()))
    stored = list((tune_dir / ".teachers").glob("*.safetensors"))
    assert len(stored) == len({r["teacher"] for r in rows})
    sources = [
        json.loads((tune_dir / r["run_dir"] / "summary.json").read_text())["teacher"]["source"]
        for r in rows
    ]
    assert sum(s == "trained" for s in sources) == len(stored)


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["train.epochs=2"], "different recipe (at train.epochs)"),
        (["--teachers", "lenet"], "--teachers differs"),
    ],
)
def test_resuming_with_a_different_search_is_refused(study, extra, fragment, capsys):
    _, recipe, _, _ = study
    assert main(["tune", str(recipe), *TINY, *extra, "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_bad_candidates_fail_before_any_study(tmp_path, capsys):
    assert (
        main(["tune", f"output.dir={tmp_path}", "--trials", "1", "--teachers", "resnet9000"]) == 2
    )
    assert "--teachers" in capsys.readouterr().err
    assert main(["tune", f"output.dir={tmp_path}", "--trials", "1", "--methods", "kdd"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert not (tmp_path / "mnist_kd-tune").exists()


def test_default_methods_are_the_logit_presets():
    methods = logit_methods()
    assert "kd" in methods and "scratch" not in methods
    assert set(methods) <= set(PRESETS)
    assert not {"fitnet", "at", "rkd", "crd"} & set(methods)  # feature/relation methods need layers


@pytest.mark.integration
def test_the_tuning_guides_command_runs(tmp_path, monkeypatch):
    """docs/guides/tuning.md's commands as written, with one-epoch settings added: the search,
    then the best trial run as a recipe."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    guide = (root / "docs" / "guides" / "tuning.md").read_text()
    block = re.search(r"```bash\n(.*?)```", guide, re.S).group(1)
    commands = [shlex.split(line.split(" #")[0]) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["kdistill", "tune"], ["kdistill", "run"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits.yaml").write_text(
        (root / "configs" / "digits.yaml").read_text()
    )
    quick = ["teacher.epochs=1", "train.epochs=1", "output.latency=false", "output.plots=false"]
    tune, run = commands
    assert main([*tune[1:3], *quick, *tune[3:]]) == 0  # the recipe, the quick settings, options
    assert main([*run[1:], *quick]) == 0
    assert (tmp_path / "runs" / "digits_kd-tuned" / "summary.json").is_file()
