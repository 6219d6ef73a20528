"""Paired comparisons of two models scored on the same test units, and the words of a verdict.

Both models are scored unit by unit (a test sample, a test window of a language model's stream,
a user of a recommender), so the noise they share cancels in the difference:

- the paired bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall
  1993, ch. 13; the percentile interval): resample the units with replacement, score both
  models on the same resample, and read the 95 % interval of the difference off the resamples;
- McNemar's exact test for two classifiers (McNemar, "Note on the sampling error of the
  difference between correlated proportions or percentages", Psychometrika 12(2), 1947): under
  no difference, each sample that one model gets right and the other wrong is the first model's
  with probability 1/2, so the discordant counts are Binomial(b + c, 1/2).

A metric is a ratio of sums over units, ``sum(values) / sum(weights)``, optionally exponentiated
(perplexity = exp of the mean negative log-likelihood over tokens): accuracy is correct/1 per
sample, perplexity nll-sum/token-count per window, HR@10 hit/1 per user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000
SEED = 0
LEVEL = 0.95
# Resamples scored at once: bounds memory to CHUNK × units indices.
CHUNK = 250


@dataclass(frozen=True)
class Outcomes:
    """One model's per-unit results on a split: ``values[i] / weights[i]`` summed as a ratio."""

    values: np.ndarray
    weights: np.ndarray
    unit: str = "test samples"
    exponentiate: bool = False

    @classmethod
    def of(cls, values, weights=None, **kwargs) -> Outcomes:
        values = np.asarray(values, dtype=np.float64)
        weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
        return cls(values, weights, **kwargs)

    def score(self, index: np.ndarray | None = None) -> np.ndarray | float:
        """The metric over all units, or over each row of resampled unit indices."""
        if index is None:
            values, weights = self.values.sum(), self.weights.sum()
        else:
            values, weights = self.values[index].sum(-1), self.weights[index].sum(-1)
        mean = values / np.maximum(weights, 1e-12)
        return np.exp(mean) if self.exponentiate else mean


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (only the first model
    right) and ``c`` (only the second right): ``min(1, 2·P[X ≤ min(b, c)])``, X ~ Bin(b+c, ½).

    Summed in exact integers, so large counts neither underflow nor lose precision."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(
    first: Outcomes,
    second: Outcomes,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """``score(first) − score(second)`` and its percentile bootstrap interval at ``level``,
    resampling the shared units (the same indices for both models)."""
    if len(first.values) != len(second.values):
        raise ValueError(
            f"paired outcomes need the same units: {len(first.values)} vs {len(second.values)}"
        )
    difference = float(first.score() - second.score())
    units = len(first.values)
    if units == 0:
        return difference, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, CHUNK):
        index = rng.integers(0, units, size=(min(CHUNK, resamples - start), units))
        draws.append(first.score(index) - second.score(index))
    draws = np.concatenate(draws)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return difference, float(low), float(high)


def compare(
    first: Outcomes,
    second: Outcomes,
    *,
    higher_is_better: bool,
    mcnemar: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict:
    """The paired statistics of ``first − second`` as summary.json keeps them: the difference,
    its bootstrap interval, McNemar's p (0/1 outcomes only), and ``better`` / ``worse``: whether
    the interval excludes zero on ``first``'s good or bad side (and, for 0/1 outcomes, McNemar's
    exact test agrees at the same level)."""
    difference, low, high = paired_bootstrap(
        first, second, resamples=resamples, seed=seed, level=level
    )
    better = low > 0 if higher_is_better else high < 0
    worse = high < 0 if higher_is_better else low > 0
    result = {
        "difference": difference,
        "ci": [low, high],
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "units": len(first.values),
        "unit": first.unit,
        "better": bool(better),
        "worse": bool(worse),
    }
    if mcnemar:
        right_first, right_second = first.values > 0.5, second.values > 0.5
        b, c = int((right_first & ~right_second).sum()), int((~right_first & right_second).sum())
        p = mcnemar_exact(b, c)
        result.update(discordant=[b, c], mcnemar_p=p)
        # With few discordant samples the percentile interval is too narrow (5 against 0 of
        # 1,000 excludes zero, McNemar's p is 0.0625): a verdict on 0/1 outcomes needs both.
        significant = p < 1 - level
        result.update(better=bool(better and significant), worse=bool(worse and significant))
    return result


def uncertainty(comparison: dict, *, scale: float = 1.0, unit: str = "") -> str:
    """``+0.3 points, 95 % CI [-0.4, +1.0], McNemar p = 0.51``: a difference with its noise."""
    low, high = (scale * v for v in comparison["ci"])
    text = (
        f"{scale * comparison['difference']:+.3g}{unit}, {100 * comparison['level']:.0f} % CI "
        f"[{low:+.3g}, {high:+.3g}]"
    )
    if "mcnemar_p" in comparison:
        text += f", McNemar p = {comparison['mcnemar_p']:.2g}"
    return f"{text}, paired over {comparison['units']:,} {comparison['unit']}"


def chance_note(
    scores: dict[str, float], classes: int, *, settings: str, margin: float = 0.05
) -> str:
    """A sentence when no student learned (every score within ``margin`` of 1/classes): then
    the student or its training settings are at fault, not distillation; else ``""``."""
    chance = 1 / max(classes, 1)
    if not scores or any(score > chance + margin for score in scores.values()):
        return ""
    shown = ", ".join(f"{name} {100 * score:.1f}%" for name, score in scores.items())
    return (
        f"Neither student learned ({shown}; chance is {100 * chance:.1f}% for {classes} classes): "
        f"the student or its settings ({settings}) are the problem, not distillation; make the "
        "student fit the data alone first (a higher or lower lr, more epochs)."
    )


__all__ = ["Outcomes", "chance_note", "compare", "mcnemar_exact", "paired_bootstrap", "uncertainty"]
