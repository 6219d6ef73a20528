"""Held-out perplexity against training wall time, for the race to quality of bench/llm.py:
each way evaluates its student every few steps, and the clock that the curve reads stops while
it does (the evaluations are not the way's cost). The cached way's curve starts at the cache's
build time: building it is part of what the cached way costs.
"""

from __future__ import annotations

import math
import time

from llm_pair import perplexity


class Curve:
    """``(step, seconds, ppl)`` every ``every`` steps; ``seconds`` since ``start()`` without the
    evaluations, whose wall and CPU seconds are kept (``paused_wall``, ``paused_cpu``) so that
    the way's own clock can leave them out too."""

    def __init__(self, model, heldout, batch: int, device, every: int):
        self.model, self.heldout, self.batch, self.device = model, heldout, batch, device
        self.every, self.points = every, []
        self.paused_wall = self.paused_cpu = 0.0
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started, self.points = time.perf_counter(), []
        self.paused_wall = self.paused_cpu = 0.0

    def __call__(self, step: int) -> None:
        if not self.every or step % self.every:
            return
        wall, cpu = time.perf_counter(), time.process_time()
        seconds = wall - self.started - self.paused_wall
        training = self.model.training
        ppl = perplexity(self.model, self.heldout, self.batch, self.device)
        self.model.train(training)
        self.points.append([step, seconds, ppl])
        self.paused_wall += time.perf_counter() - wall
        self.paused_cpu += time.process_time() - cpu


def time_to_quality(
    points: list, target: float, offset: float = 0.0, rtol: float = 1e-4
) -> float | None:
    """The first wall time (``offset`` + the curve's seconds) at which the perplexity reaches
    ``target``, interpolated in log perplexity between the evaluations around it (from
    ``offset`` itself when the first one is already there); ``None`` if it never does. Within
    ``rtol`` of ``target`` counts as reaching it: the ways compute the same training, and their
    float32 perplexities after it differ in the sixth digit (180.04487 against TRL's 180.04415),
    which is a tie, not a miss."""
    previous = None
    for _, seconds, ppl in points:
        if ppl <= target * (1 + rtol):
            if previous is None or previous[1] <= ppl:
                return offset + seconds
            (s0, p0), (s1, p1) = previous, (seconds, ppl)
            share = min((math.log(p0) - math.log(target)) / (math.log(p0) - math.log(p1)), 1.0)
            return offset + s0 + share * (s1 - s0)
        previous = (seconds, ppl)
    return None
