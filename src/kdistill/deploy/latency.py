"""How long a model takes, measured with ``torch.utils.benchmark``'s blocked autorange (calls
timed in blocks long enough that the timer's own cost vanishes), to a time budget so a large
teacher can never stall a run; and whether two timings are good enough to compare.

A ratio of two timings is shown only when both are resolved (the median well above the
timer's resolution, so not zero) and stable (the interquartile range small against the
median). A tiny model at batch 1 on a shared machine is often neither: its timings moved by
100x between two measurements of the same architecture, and a 0.0x ratio was printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import benchmark

from kdistill.modeling import call_model

MIN_RUN_TIME = 0.2  # seconds of timed blocks per measurement: torch.utils.benchmark's default
BUDGET_S = 4.0  # seconds per measurement at most, past one block: a 1 s teacher still gets 3 blocks
MIN_BLOCKS = 3  # fewer blocks than this say nothing about spread
STABLE_SPREAD = 0.1  # IQR / median: torch.utils.benchmark's own threshold (meets_confidence)
RESOLVED = 1000  # a median this many timer ticks long is resolved


@dataclass(frozen=True)
class Latency:
    """One timing: the median and interquartile range of a call in milliseconds, how many
    blocks they come from, and the timer's resolution per call."""

    median_ms: float
    iqr_ms: float
    blocks: int
    resolution_ms: float

    @property
    def measurable(self) -> bool:
        resolved = self.median_ms > RESOLVED * self.resolution_ms
        stable = self.blocks >= MIN_BLOCKS and self.iqr_ms <= STABLE_SPREAD * self.median_ms
        return resolved and stable


def latency_ratio(slow: Latency, fast: Latency) -> float | None:
    """``slow / fast``, or None when either timing cannot carry a ratio."""
    return slow.median_ms / fast.median_ms if slow.measurable and fast.measurable else None


def time_call(
    call: Callable[[], object],
    *,
    min_run_time: float = MIN_RUN_TIME,
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> Latency:
    """Time ``call()`` with ``Timer.blocked_autorange``; when a slow call leaves fewer than
    ``MIN_BLOCKS`` blocks, more are timed while ``budget_s`` allows."""
    threads = torch.get_num_threads()  # the Timer's default is 1: time as the model would run
    timer = benchmark.Timer("call()", globals={"call": call}, timer=clock, num_threads=threads)
    started = clock()
    first = timer.blocked_autorange(min_run_time=min_run_time)
    parts = [first]
    while sum(len(m.raw_times) for m in parts) < MIN_BLOCKS and clock() - started < budget_s:
        parts.append(timer.timeit(first.number_per_run))
    merged = benchmark.Measurement.merge(parts)[0]
    resolution = time.get_clock_info("perf_counter").resolution / first.number_per_run
    ms = 1000 * merged.median, 1000 * merged.iqr
    return Latency(*ms, blocks=len(merged.raw_times), resolution_ms=1000 * resolution)


def repeat_sample(example, batch_size: int):
    """A batch of ``batch_size`` copies of one sample (a tensor or a dict of tensors)."""
    if isinstance(example, Mapping):
        return {k: repeat_sample(v, batch_size) for k, v in example.items()}
    return example.unsqueeze(0).expand(batch_size, *example.shape).contiguous().cpu()


@torch.inference_mode()
def measure_latency(model: nn.Module, example, *, batch_size: int = 1, **timing) -> Latency:
    """One forward pass on a batch built from ``example`` (one sample without the batch axis:
    a tensor, or a dict of tensors for text models), on the CPU in eval mode (``time_call``)."""
    model = model.eval().cpu()
    batch = repeat_sample(example, batch_size)
    return time_call(lambda: call_model(model, batch), **timing)
