"""Paired statistics of two models on the same test units (kdistill.evaluation.paired) against
known values, and the verdict's wording when the difference is and is not beyond the noise."""

import math

import numpy as np
import pytest

from kdistill.evaluation.paired import (
    Outcomes,
    chance_note,
    compare,
    mcnemar_exact,
    paired_bootstrap,
)


def test_mcnemar_exact_known_values():
    # b=1, c=9: P[X <= 1] for X ~ Bin(10, 1/2) is 11/1024; two-sided 22/1024.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    # b=c: the tail passes 1/2, so p is capped at 1; no discordant pairs carry no evidence.
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # Large counts stay exact (no underflow of 2^-n).
    assert 0 < mcnemar_exact(400, 600) < 1e-9


def test_mcnemar_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats", reason="scipy is only a cross-check here")
    for b, c in ((3, 12), (40, 55), (0, 1), (17, 17), (250, 300)):
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def correct(n_right: int, n: int = 1000) -> Outcomes:
    return Outcomes.of(np.arange(n) < n_right)


def test_bootstrap_excludes_zero_for_a_clear_win_and_not_for_identical_predictions():
    win = compare(correct(900), correct(800), higher_is_better=True, mcnemar=True)
    assert win["difference"] == pytest.approx(0.1)
    assert 0 < win["ci"][0] < 0.1 < win["ci"][1] and win["better"] and not win["worse"]
    assert win["discordant"] == [100, 0] and win["mcnemar_p"] < 1e-20
    same = compare(correct(850), correct(850), higher_is_better=True, mcnemar=True)
    assert same["ci"] == [0.0, 0.0] and not same["better"] and not same["worse"]
    assert same["mcnemar_p"] == 1.0
    # Lower is better (perplexity): a lower first model is the better one.
    lower = compare(correct(100), correct(300), higher_is_better=False)
    assert lower["better"] and not lower["worse"]


def test_a_win_on_few_discordant_samples_needs_mcnemar_too():
    """5 right answers against none of 1,000: no resample of the percentile bootstrap is below
    zero often enough to include it, but McNemar's exact p is 2/32 = 0.0625: no verdict."""
    first = Outcomes.of(np.arange(1000) < 805)
    tied = compare(first, correct(800), higher_is_better=True, mcnemar=True)
    assert tied["discordant"] == [5, 0] and tied["mcnemar_p"] == pytest.approx(0.0625)
    assert tied["ci"][0] > 0 and not tied["better"]


def test_bootstrap_is_paired_and_deterministic_under_the_seed():
    rng = np.random.default_rng(1)
    first, second = Outcomes.of(rng.random(500) < 0.7), Outcomes.of(rng.random(500) < 0.7)
    assert paired_bootstrap(first, second, seed=3) == paired_bootstrap(first, second, seed=3)
    assert paired_bootstrap(first, second, seed=3) != paired_bootstrap(first, second, seed=4)
    # One model against itself shifted by a constant: pairing leaves no noise at all.
    nll = rng.random(50) * 100
    tokens = np.full(50, 100.0)
    base = Outcomes.of(nll, tokens, exponentiate=True)
    worse = Outcomes.of(nll + 10, tokens, exponentiate=True)  # +0.1 nats per token everywhere
    difference, low, _ = paired_bootstrap(worse, base)
    assert difference > 0 and low > 0
    assert difference == pytest.approx(
        math.exp((nll.sum() + 500) / 5000) - math.exp(nll.sum() / 5000)
    )


def test_chance_note_only_when_no_student_learned():
    note = chance_note({"distilled": 0.35, "scratch": 0.31}, 3, settings="lr=0.001, epochs=10")
    assert "Neither student learned" in note and "33.3%" in note and "lr=0.001, epochs=10" in note
    assert "not distillation" in note
    assert chance_note({"distilled": 0.58, "scratch": 0.31}, 3, settings="") == ""
