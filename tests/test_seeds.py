"""`kdistill run --seeds N` (kdistill.run.seeds): one ordinary run per seed and one summary of
them, whose numbers are those of each seed's summary.json; the tests across seeds against known
values; bad input refused in one line."""

import contextlib
import io
import json
import math
import statistics

import pytest
from test_hardening import assert_user_error, kdistill_cli

from kdistill.cli import main
from kdistill.run.seeds import across_seeds, seeds_verdict, t_quantile

TINY = [
    "data.dataset=digits",
    "data.subset=200",
    "train.epochs=1",
    "teacher.epochs=1",
    "teacher.model=mlp",
    "student.model=mlp_tiny",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def quiet_main(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # The option overrides the recipe's field.
    assert (
        quiet_main("run", *TINY, f"output.dir={root}", "name=pair", "train.seeds=5", "--seeds", "2")
        == 0
    )
    return root


def test_each_seed_is_a_run_and_the_summary_lives_in_the_parent(two_seeds):
    parent = two_seeds / "pair"
    assert {p.name for p in parent.iterdir()} >= {
        ".kdistill-run",
        ".kdistill-files",
        "config.yaml",
        "seeds.json",
        "seeds.md",
        "seeds.html",
    }
    assert "seeds: 2" in (parent / "config.yaml").read_text()
    assert not (two_seeds / "pair-seed2").exists()
    for seed in (0, 1):
        run_dir = two_seeds / f"pair-seed{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (run_dir / ".kdistill-run").is_file() and (run_dir / "report.md").is_file()
        assert "student_vs_scratch" in summary["comparisons"]
        assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()
    assert len(list((two_seeds / ".teachers").glob("*.safetensors"))) == 2  # one teacher per seed


def test_summary_numbers_are_the_seeds_own(two_seeds):
    result = json.loads((two_seeds / "pair" / "seeds.json").read_text())
    summaries = [
        json.loads((two_seeds / f"pair-seed{s}" / "summary.json").read_text()) for s in (0, 1)
    ]
    assert result["seeds"] == [0, 1] and result["metric"] == "accuracy"
    for role in ("teacher", "scratch", "student"):
        values = [s[role]["accuracy"] for s in summaries]
        entry = result["roles"][role]["accuracy"]
        assert entry["values"] == values
        assert entry["mean"] == pytest.approx(statistics.mean(values))
        assert entry["std"] == pytest.approx(statistics.stdev(values))
    comparisons = [s["comparisons"]["student_vs_scratch"] for s in summaries]
    test = result["student_vs_scratch"]
    assert test["wins"] == sum(c["better"] for c in comparisons)
    assert test["losses"] == sum(c["worse"] for c in comparisons)
    assert test["wins"] + test["ties"] + test["losses"] == 2
    differences = [s["student"]["accuracy"] - s["scratch"]["accuracy"] for s in summaries]
    assert [r["difference"] for r in result["runs"]] == pytest.approx(differences)
    half = 12.7062047 * statistics.stdev(differences) / math.sqrt(2)  # t(0.975, 1)
    assert test["t_interval"] == pytest.approx(
        [statistics.mean(differences) - half, statistics.mean(differences) + half]
    )
    markdown = (two_seeds / "pair" / "seeds.md").read_text()
    assert result["verdict"] in markdown and "pair-seed1" in markdown
    assert f"{100 * result['roles']['scratch']['accuracy']['mean']:.2f} ±" in markdown


def test_rerun_reuses_teachers_and_resume_reads_finished_seeds(two_seeds):
    before = (two_seeds / "pair" / "seeds.json").read_text()
    assert (
        quiet_main("run", *TINY, f"output.dir={two_seeds}", "name=pair", "--seeds", "2", "--resume")
        == 0
    )
    assert (two_seeds / "pair" / "seeds.json").read_text() == before  # read back, not retrained
    assert (
        quiet_main(
            "run", *TINY, f"output.dir={two_seeds}", "name=pair", "--seeds", "2", "--overwrite"
        )
        == 0
    )
    for seed in (0, 1):
        summary = json.loads((two_seeds / f"pair-seed{seed}" / "summary.json").read_text())
        assert summary["teacher"]["source"].startswith("reused")


def test_seeds_on_own_data_follow_the_data_as_one_run_does(tmp_path):
    """Each seed of the built-in recipe on other data is named after that data and gets the
    settings chosen from it (here the epoch budget), not the demo's 160 epochs."""
    settings = [s for s in TINY if not s.startswith(("train.epochs", "teacher.epochs"))]
    assert (
        quiet_main(
            "run", *settings, "train.batch_size=128", f"output.dir={tmp_path}", "--seeds", "2"
        )
        == 0
    )
    assert {p.name for p in tmp_path.iterdir()} >= {
        "digits_kd",
        "digits_kd-seed0",
        "digits_kd-seed1",
    }
    for seed in (0, 1):
        config = (tmp_path / f"digits_kd-seed{seed}" / "config.yaml").read_text()
        assert "epochs: 100" in config and "epochs: 160" not in config, config


def test_one_seed_is_a_plain_run(tmp_path):
    assert quiet_main("run", *TINY, f"output.dir={tmp_path}", "name=one", "--seeds", "1") == 0
    assert (tmp_path / "one" / "summary.json").is_file()
    assert not (tmp_path / "one" / "seeds.json").exists() and not (tmp_path / "one-seed0").exists()


def test_t_quantile_and_sign_test_known_values():
    # Student's t, two-sided 95 %: the printed tables' 12.706, 4.303, 2.776, 2.262, 2.042.
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    test = across_seeds([0.01, 0.02, 0.03, 0.0, 0.02], higher_is_better=True)
    assert test["sign_test"] == {"better": 4, "worse": 0, "equal": 1, "p": pytest.approx(2 / 16)}
    assert test["t_interval"][0] == pytest.approx(
        0.016 - 2.776445 * statistics.stdev([0.01, 0.02, 0.03, 0, 0.02]) / math.sqrt(5)
    )


def verdict_of(differences, higher_is_better=True, wins=0, ties=None):
    test = across_seeds(differences, higher_is_better=higher_is_better)
    n = len(differences)
    test.update(
        wins=wins,
        ties=n - wins if ties is None else ties,
        losses=n - wins - (n - wins if ties is None else ties),
    )
    task = {"percent": ["accuracy"], "higher_is_better": {"accuracy": higher_is_better}}
    return seeds_verdict({"student_vs_scratch": test, "task": task, "metric": "accuracy"})


def test_verdict_words_follow_the_interval_across_seeds():
    helped = verdict_of([0.010, 0.012, 0.011, 0.009, 0.010], wins=3)
    assert helped.startswith(
        "Over 5 seeds distillation helped: distilled − scratch test accuracy +1.04 points"
    )
    assert "95 % t-interval [+0.898, +1.18] over 5 seeds" in helped
    assert (
        "sign test p = 0.062 (better in 5 of 5); "
        "a significant win on its own test set in 3 of 5 seeds" in helped
    )
    noisy = verdict_of([0.01, -0.008, 0.004])
    assert noisy.startswith(
        "Over 3 seeds no significant difference between the distilled and the scratch"
    )
    assert verdict_of([-0.02, -0.021, -0.019]).startswith("Over 3 seeds distillation did worse")
    # Lower is better (perplexity): a consistent fall is help.
    assert "helped" in verdict_of([-0.5, -0.6, -0.55], higher_is_better=False)
    assert verdict_of([0.004], wins=1).startswith(
        "One seed: no test across seeds (run two or more); "
        "distilled − scratch test accuracy +0.4 points, "
        "a significant win on its own test set in 1 of 1 seed (0 ties, 0 losses)"
    )


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--seeds", "0"], ["--seeds", "greater than or equal to 1"]),
        (["train.seeds=0"], ["train.seeds"]),
        (["--seeds", "2", "--resume"], ["--resume", "holds no seeds run"]),
        (["--seeds", "2", "name=" + "n" * 95], ["name", "shorter name="]),
    ],
)
def test_bad_seeds_are_one_line(tmp_path, args, fragments):
    result = kdistill_cli("run", *TINY, f"output.dir={tmp_path / 'runs'}", *args, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "runs").exists()  # refused before any directory was made


def test_a_clash_on_a_later_seed_stops_before_the_first_trains(tmp_path):
    (tmp_path / "clash-seed1").mkdir()
    (tmp_path / "clash-seed1" / "notes.txt").write_text("mine")
    result = kdistill_cli(
        "run", *TINY, f"output.dir={tmp_path}", "name=clash", "--seeds", "2", cwd=tmp_path
    )
    assert_user_error(result, "clash-seed1", "already exists")
    assert not (tmp_path / "clash-seed0").exists() and not (tmp_path / "clash").exists()
    assert (tmp_path / "clash-seed1" / "notes.txt").read_text() == "mine"


def test_tune_refuses_seeds_in_one_line(tmp_path, capsys):
    pytest.importorskip("optuna", reason="kdistill tune needs the optional optuna")
    code = main(["tune", *TINY, f"output.dir={tmp_path}", "train.seeds=3", "--trials", "1"])
    assert code == 2
    assert "train.seeds=3: a trial is one run of one seed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_time_budget_is_measured_once_for_every_seed(tmp_path, monkeypatch):
    """train.time_budget fixes the epochs once, before the first seed: every seed (and in each
    the scratch and the distilled student) trains the same number."""
    import kdistill.run.plan as plan_module
    import kdistill.run.seeds as seeds
    from kdistill.run.budget import EpochCost
    from kdistill.run.config import load_config

    measured, epochs = [], []
    monkeypatch.setattr(
        plan_module, "epoch_cost", lambda *_: measured.append(1) or EpochCost(1.0, (0.0,))
    )

    class Stop(Exception):
        pass

    def run(part, **_):
        epochs.append(part.train.epochs)
        if len(epochs) == 2:
            raise Stop
        return {}

    monkeypatch.setattr(seeds, "run", run)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data: {dataset: digits, subset: 200}\nteacher: {model: mlp, augment: none}\n"
        f"train: {{time_budget: 7, seeds: 2}}\noutput: {{dir: {tmp_path / 'runs'}}}\n"
    )
    with pytest.raises(Stop):
        seeds.run_seeds(load_config(recipe), echo=lambda *_: None)
    assert measured == [1] and epochs == [7, 7]
