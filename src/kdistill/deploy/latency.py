"""How long a model takes: the median wall time of a forward pass, to a time budget, so a large
teacher can never stall a run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from kdistill.modeling import call_model


def repeat_sample(example, batch_size: int):
    """A batch of ``batch_size`` copies of one sample (a tensor or a dict of tensors)."""
    if isinstance(example, Mapping):
        return {k: repeat_sample(v, batch_size) for k, v in example.items()}
    return example.unsqueeze(0).expand(batch_size, *example.shape).contiguous().cpu()


@torch.inference_mode()
def measure_latency(
    model: nn.Module, example, *, batch_size: int = 1, repeats: int = 30, warmup: int = 5,
    budget_s: float = 2.0,
) -> float:
    """Median wall time in milliseconds of one forward pass on a batch built from ``example``
    (one sample without the batch axis: a tensor, or a dict of tensors for text models), on the
    CPU in eval mode.

    Stops early after ``budget_s`` seconds of timed passes so a large teacher cannot stall a run.
    """
    model = model.eval().cpu()
    batch = repeat_sample(example, batch_size)
    return median_ms(lambda: call_model(model, batch), repeats=repeats, warmup=warmup, budget_s=budget_s)


def median_ms(call: Callable[[], object], *, repeats: int = 30, warmup: int = 5, budget_s: float = 2.0) -> float:
    """Median wall time of ``call()`` in milliseconds, to a time budget: up to ``warmup``
    untimed calls within a quarter of ``budget_s`` (at least one: the first call pays for lazy
    initialisation), then up to ``repeats`` timed calls within ``budget_s`` (at least 3). A
    measurement thus takes about 1.25 × ``budget_s`` plus four calls, whatever the model."""
    deadline = time.perf_counter() + budget_s / 4
    for _ in range(max(warmup, 1)):
        call()
        if time.perf_counter() > deadline:
            break
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 3:
            break
    return 1000 * statistics.median(times)
