"""The race's arithmetic: bench/llm_curve.py's time to TRL's quality, and bench/llm_seeds.py's
table of several races with the spread across seeds."""

import importlib
import json

import pytest
from conftest import ROOT


def test_time_to_quality_interpolates_in_log_perplexity_and_counts_a_tie(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    curve = importlib.import_module("llm_curve")
    points = [[4, 10.0, 400.0], [8, 20.0, 100.0], [12, 30.0, 90.0]]
    # 200 lies halfway between 400 and 100 in log perplexity; the offset is the cache's build.
    assert curve.time_to_quality(points, 200.0, offset=5.0) == pytest.approx(20.0)
    assert curve.time_to_quality(points, 500.0) == 10.0  # already there at the first evaluation
    assert curve.time_to_quality(points, 50.0) is None
    # The same training computed another way ends a float32 rounding above: a tie, reached.
    assert curve.time_to_quality(points, 90.0 / (1 + 5e-6)) == pytest.approx(30.0)
    assert curve.time_to_quality(points, 89.0) is None


def report(seed: int, trl_ppl: float, equal_ppl: float, ratio: float | None) -> dict:
    ways = {
        "kdistill_live": {"tokens_per_s": 150.0},
        "kdistill_cached": {"tokens_per_s": 200.0},
        "trl": {"tokens_per_s": 100.0, "train_s": 120.0, "ppl": trl_ppl},
    }
    return {
        "settings": {"seed": seed},
        "main_loss": "forward_kl",
        "by_loss": {"forward_kl": ways},
        "prepared": {"cache_build_s": 25.0},
        "time_to_trl_quality_ratio": ratio,
        "time_to_trl_quality_ratio_cache_reused": 0.4,
        "equal_wall": {"steps": 48, "ppl": equal_ppl},
    }


def test_the_table_has_a_row_a_seed_and_counts_the_seeds_won(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    seeds = importlib.import_module("llm_seeds")
    paths = []
    for seed, trl_ppl, equal_ppl, ratio in [(1, 170.0, 160.0, None), (0, 190.0, 150.0, 0.6)]:
        paths.append(tmp_path / f"race{seed}.json")
        paths[-1].write_text(json.dumps(report(seed, trl_ppl, equal_ppl, ratio)))
    paths.append(tmp_path / "race2.json")
    paths[-1].write_text(json.dumps(report(2, 150.0, 155.0, 0.7)))
    assert seeds.main([*map(str, paths), "--results", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "llm_seeds.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0] for line in rows] == ["| 0", "| 1", "| 2"]  # by seed
    assert "| 1.50×, 2.00× | 0.60 |" in rows[0]
    assert "not reached" in rows[1]
    assert "below TRL's on 2 of 3 seeds" in table
    # 40, 10 and -5 perplexity in the cached way's favour: mean 15, sd 22.91
    assert "15.00 ± 22.91" in table
    assert "the 2 of 3 seeds that reached TRL's perplexity: 0.65 ± 0.07" in table
    saved = json.loads((tmp_path / "out" / "llm_seeds.json").read_text())
    assert [r["seed"] for r in saved["seeds"]] == [0, 1, 2]


def test_a_second_loss_is_read_from_its_own_race_and_has_no_equal_wall_run(monkeypatch, tmp_path):
    """--loss jsd over a race of forward KL then JSD (seed 0) and a JSD-only race (seed 1):
    each row JSD's own times and ratio; the equal-wall run is the first loss's, so seed 0's
    JSD row has none, and the precision the races ran in is in the command shown."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    seeds = importlib.import_module("llm_seeds")
    both = report(0, 190.0, 150.0, 0.6)
    both["settings"]["precision"] = "bf16"
    jsd_ways = {
        "kdistill_live": {"tokens_per_s": 190.0},
        "kdistill_cached": {"tokens_per_s": 250.0},
        "trl": {"tokens_per_s": 100.0, "train_s": 150.0, "ppl": 295.0},
    }
    both["by_loss"]["jsd"] = jsd_ways
    both["race_by_loss"] = {
        "jsd": {"time_to_trl_quality_ratio": 0.4, "time_to_trl_quality_ratio_cache_reused": 0.32}
    }
    alone = {
        **report(1, 0.0, 0.0, 0.0),
        "main_loss": "jsd",
        "by_loss": {"jsd": jsd_ways},
        "settings": {"seed": 1, "precision": "bf16"},
        "time_to_trl_quality_ratio": 0.5,
        "equal_wall": {"steps": 60, "ppl": 200.0},
    }
    short = {
        **alone,
        "settings": {"seed": 2, "precision": "bf16"},
        "time_to_trl_quality_ratio": None,  # a bf16 student a rounding short of TRL's at the end
        "time_to_trl_quality_ratio_cache_reused": None,
    }
    paths = [tmp_path / "both.json", tmp_path / "alone.json", tmp_path / "short.json"]
    for path, data in zip(paths, (both, alone, short)):
        path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert seeds.main([*map(str, paths), "--loss", "jsd", "--results", str(out)]) == 0
    table = (out / "llm_seeds.md").read_text()
    assert "--losses jsd --precision bf16 --seed N" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert "| 150.0 | 295.00 |" in rows[0] and "| 0.40 | 0.32 | — | — |" in rows[0]
    assert "| 0.50 | 0.40 | 60 | 200.00 |" in rows[1]
    assert "| not reached | not reached | 60 | 200.00 |" in rows[2]
    assert "the 2 of 3 seeds that reached TRL's perplexity: 0.45 ± 0.07" in table
    assert "below TRL's on 2 of 2 seeds" in table
    assert "The other 1 raced jsd second" in table
    with pytest.raises(SystemExit, match="without reverse_kl"):
        seeds.main([str(paths[1]), "--loss", "reverse_kl", "--results", str(out)])


def test_the_sparse_table_decides_each_loss_by_its_own_target(monkeypatch):
    """bench/llm_sparse.py's rule: the smallest cache within the target on every seed, the
    forward KL's 2 % and JSD's 5 %; a mean inside the target with a seed outside is not."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sparse = importlib.import_module("llm_sparse")

    def row(size: float, mean: float, worst: float) -> dict:
        return {
            "bytes_per_position": size,
            "bytes_vs_dense": size / 196608,
            "ppl_mean": 100 * mean,
            "ppl_vs_live": mean,
            "ppl_vs_live_worst": worst,
        }

    rows = {
        "live": row(196608, 1.0, 1.0),
        "small": row(768, 1.01, 1.03),  # within 2 % on average, not on its worst seed
        "large": row(1536, 1.009, 1.013),
    }
    assert sparse.decide(rows)["signal"] == "large"
    jsd = sparse.decide(rows, sparse.JSD_PPL_TARGET, "JSD")
    assert jsd["signal"] == "small" and jsd["meets_target"] and "within 5 %" in jsd["why"]
    rows["small"] = row(768, 1.07, 1.08)
    rows["large"] = row(1536, 1.06, 1.09)
    closest = sparse.decide(rows, sparse.JSD_PPL_TARGET, "JSD")
    assert closest["signal"] == "large" and not closest["meets_target"]
    assert "no cache reaches 5 % of the live JSD student" in closest["why"]


def test_every_loss_the_ways_ran_gets_its_race(monkeypatch):
    """bench/llm_report.race_by_loss: the time to TRL's perplexity for each loss, the cache's
    build counted in the cached way's clock; a loss without TRL's way (the CE scratch) has none."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    llm_report = importlib.import_module("llm_report")

    def ways(trl_s: float, cached_reach: float) -> dict:
        return {
            "kdistill_live": {"ppl": 100.0, "curve": [[4, 10.0, 200.0], [8, 20.0, 100.0]]},
            "kdistill_cached": {"ppl": 100.0, "curve": [[4, 5.0, 200.0], [8, cached_reach, 100.0]]},
            "trl": {"ppl": 100.0, "train_s": trl_s, "curve": [[4, 50.0, 200.0], [8, 80.0, 100.0]]},
        }

    by_loss = {"forward_kl": ways(100.0, 30.0), "jsd": ways(200.0, 40.0), "ce": {"plain": {}}}
    by_loss["ce"]["plain"] = {"ppl": 150.0, "curve": [[8, 20.0, 150.0]]}
    races = llm_report.race_by_loss(by_loss, {"cache_build_s": 20.0})
    assert set(races) == {"forward_kl", "jsd"}
    assert races["forward_kl"]["time_to_trl_quality_ratio"] == pytest.approx((20 + 30) / 100)
    assert races["jsd"]["time_to_trl_quality_ratio"] == pytest.approx((20 + 40) / 200)
    assert races["jsd"]["time_to_trl_quality_ratio_cache_reused"] == pytest.approx(40 / 200)
    assert races["jsd"]["time_to_trl_quality_s"]["plain"] is None  # scratch never gets there
