"""`kdistill run` end to end on a small slice of real MNIST, and the command line's contract:
exit 0 on success, 2 with one line for a user error, never a traceback for bad input."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from conftest import call_cli, subprocess_env

from kdistill.cli import main
from kdistill.run.config import Recipe

QUICK = ["data.subset=600", "teacher.epochs=2", "train.epochs=2", "train.batch_size=32"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One quick run shared by the tests that read its outputs (its console output beside it)."""
    root = tmp_path_factory.mktemp("runs")
    with contextlib.redirect_stdout(io.StringIO()) as console:
        assert main(["run", *QUICK, f"output.dir={root}", "name=quick"]) == 0
    (root / "console.txt").write_text(console.getvalue())
    return root, root / "quick"


@pytest.mark.integration
def test_run_writes_the_run_directory(finished_run):
    _, run_dir = finished_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "checkpoints/teacher.safetensors",
        "checkpoints/scratch.safetensors",
        "checkpoints/student.safetensors",
        "plots/loss_terms.png",
        "plots/val_accuracy.png",
    ):
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name


@pytest.mark.integration
def test_summary_has_accuracy_size_and_latency_for_all_three(finished_run):
    _, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "fraction" in summary["accuracy_unit"]
    for role in ("teacher", "scratch", "student"):
        entry = summary[role]
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert entry["params"] > 0 and entry["bytes"] > 0
        assert entry["latency_ms"]["batch_1"] > 0 and entry["latency_ms"]["batch_256"] > 0
    assert summary["teacher"]["accuracy"] > 0.5  # a real teacher, even after 2 epochs on 600 digits
    assert summary["teacher"]["params"] > 4 * summary["student"]["params"]
    assert summary["data"]["sizes"]["test"] == 120


@pytest.mark.integration
def test_metrics_log_and_report(finished_run):
    _, run_dir = finished_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [
        ("teacher", 1),
        ("teacher", 2),
        ("scratch", 1),
        ("scratch", 2),
        ("student", 1),
        ("student", 2),
    ]
    scratch, student = (
        [r for r in records if r["phase"] == phase][0] for phase in ("scratch", "student")
    )
    assert {"loss", "loss/ce", "val/accuracy", "train/accuracy"} <= set(scratch)
    # The built-in recipe's distilled student also reads the unlabelled transfer set: its
    # training accuracy is over the labelled digits (420 of 2,620 an epoch), not diluted.
    assert {"loss", "loss/ce", "loss/kd", "val/accuracy", "train/accuracy"} <= set(student)
    assert student["train/accuracy"] > 420 / 2620, student
    assert student["loss"] == pytest.approx(student["loss/ce"] + student["loss/kd"], rel=1e-5)
    report = (run_dir / "report.md").read_text()
    assert "| distilled student (mlp) |" in report and "plots/loss_terms.png" in report


@pytest.mark.integration
def test_every_comparison_carries_its_interval_and_test(finished_run):
    root, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    comparisons = summary["comparisons"]
    assert set(comparisons) == {"student_vs_scratch", "teacher_vs_student", "teacher_vs_scratch"}
    for key, entry in comparisons.items():
        first, second = key.split("_vs_")
        stated = summary[first]["accuracy"] - summary[second]["accuracy"]
        assert entry["difference"] == pytest.approx(stated)
        low, high = entry["ci"]
        assert low <= entry["difference"] <= high and entry["level"] == 0.95
        assert 0.0 <= entry["mcnemar_p"] <= 1.0 and entry["units"] == 120
        significant = entry["mcnemar_p"] < 0.05
        assert entry["better"] == (low > 0 and significant)
        assert entry["worse"] == (high < 0 and significant)
    assert set(summary["validation"]) == {"scratch", "student"}
    report = (run_dir / "report.md").read_text()
    console = (root / "console.txt").read_text()
    for text in (report, console):
        assert "| distilled − scratch (accuracy) |" in text
        assert "| teacher − scratch (accuracy) |" in text
        assert "95 % CI [" in text and "McNemar p = " in text
        assert "paired over 120 test samples" in text


@pytest.mark.integration
def test_resolved_config_reproduces_the_run(finished_run):
    root, run_dir = finished_run
    written = Recipe.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert written.train.epochs == 2 and written.data.subset == 600
    assert written.output.dir == str(root)


@pytest.mark.integration
def test_existing_run_is_refused_then_replaced_with_overwrite_reusing_the_teacher(
    finished_run, capsys
):
    root, run_dir = finished_run
    before = (run_dir / "summary.json").read_text()
    assert main(["run", *QUICK, f"output.dir={root}", "name=quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "summary.json").read_text() == before  # nothing was touched
    assert (
        main(
            [
                "run",
                *QUICK,
                f"output.dir={root}",
                "name=quick",
                "--overwrite",
                "output.latency=false",
            ]
        )
        == 0
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["source"].startswith("reused")
    assert not any(
        json.loads(l)["phase"] == "teacher"
        for l in (run_dir / "metrics.jsonl").read_text().splitlines()
    )


def test_recipe_file_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "fromfile",
                "data": {"dataset": "digits"},
                "student": {"model": "mlp", "kwargs": {"width": 8}},
            }
        )
    )
    code = main(
        [
            "run",
            str(recipe),
            "teacher.epochs=1",
            "train.epochs=1",
            f"output.dir={tmp_path}",
            "output.latency=false",
            "output.plots=false",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "fromfile" / "summary.json").read_text())
    assert summary["data"]["dataset"] == "digits"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "train.epoch=3"], "did you mean 'train.epochs'"),
        (["run", "missing.yaml"], "missing.yaml"),
        (["run", "student.model=resnet9000"], "student.model"),
        (["run", "data.dataset=npz"], "data.path"),
        (
            ["run", "teacher.checkpoint=nowhere.safetensors", "data.subset=100"],
            "teacher.checkpoint",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(args, fragment, capsys, tmp_path):
    assert main([*args, f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.integration
def test_python_m_and_console_script_in_a_subprocess(tmp_path):
    env = subprocess_env()
    listing = subprocess.run(
        [sys.executable, "-m", "kdistill", "list", "models"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert listing.returncode == 0 and "mlp_tiny" in listing.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kdistill", "run", "trian.epochs=1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "did you mean 'train'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a bad recipe


@pytest.mark.parametrize("what", ["methods", "models", "datasets", "losses"])
def test_list(what, capsys):
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(len(line.split()) >= 2 for line in lines)  # a name and a description


def test_list_models_shows_every_family(capsys):
    assert main(["list", "models"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"resnet8", "gru", "text_cnn", "minilm_l6", "neumf_small"} <= names


def test_list_models_tags_each_model_by_the_inputs_it_reads(capsys):
    """The sequence models were tagged [image] (issue 27, item 15d)."""
    assert main(["list", "models"]) == 0
    tags = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert {name: tags[name] for name in ("bilstm", "gru", "gru_tiny", "conv1d")} == dict.fromkeys(
        ("bilstm", "gru", "gru_tiny", "conv1d"), "[sequence]"
    )
    assert (tags["resnet8"], tags["text_cnn"], tags["neumf"]) == ("[image]", "[tokens]", "[recsys]")


def test_list_taps_of_the_users_own_class_and_never_a_function(tmp_path, monkeypatch, capsys):
    """`list taps module:Class` was refused (issue 27, item 15e); it builds only a Module class."""
    (tmp_path / "listed_nets.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, hidden=8):\n"
        "        super().__init__()\n"
        "        self.body, self.head = nn.Linear(4, hidden), nn.Linear(hidden, 2)\n"
        "def factory():\n"
        "    open('ran', 'w').close()\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["list", "taps", "listed_nets:Net"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [["body", "Linear"], ["head", "Linear"]]
    assert main(["list", "taps", "listed_nets:factory"]) == 2
    assert "list taps builds an nn.Module class, not a function" in capsys.readouterr().err
    assert main(["list", "taps", "os:system"]) == 2  # refused by the resolver or here, never called
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists()


def test_help_gives_each_verb_one_line_and_each_verb_prose(monkeypatch):
    """`kdistill --help` lists each verb on one line; `kdistill VERB --help` has whole
    sentences: no line break that a docstring's wrapping put mid-sentence (issue 34.4)."""
    from kdistill.cli import app

    monkeypatch.setenv("COLUMNS", "100")
    commands = typer.main.get_command(app).commands.values()
    panel = call_cli("--help").stdout.split("Commands")[1]
    rows = [line.strip("│ ").split() for line in panel.splitlines() if line.startswith("│")]
    assert [row[0] for row in rows] == [command.name for command in commands]
    for command in commands:
        assert command.short_help and "\n" not in command.short_help
        assert all("\n" not in paragraph for paragraph in command.help.split("\n\n"))


@pytest.mark.integration
@pytest.mark.parametrize("args", [["list", "models"], ["run", "trian.epochs=1"]])
def test_a_launched_process_exits_with_its_code_and_every_line(tmp_path, args):
    """Under a launcher (LOCAL_RANK set) the console script skips the interpreter's teardown,
    where Gloo can abort a finished run: the exit status and every line printed are kept, the
    same as in this process."""
    kdistill = Path(sys.executable).with_name("kdistill")
    env = {**subprocess_env(), "LOCAL_RANK": "0"}
    launched = subprocess.run(
        [str(kdistill), *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    here = call_cli(*args, cwd=tmp_path)
    assert (launched.returncode, launched.stdout, launched.stderr) == (
        here.returncode,
        here.stdout,
        here.stderr,
    )
