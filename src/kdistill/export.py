"""Measuring what a student won: parameters, bytes on disk, CPU latency. (ONNX export joins here.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kdistill.checkpoint import load_tensors, save_tensors


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: str | Path) -> int:
    """Write ``model``'s state dict as safetensors, atomically and with a checksum; returns the
    file size in bytes."""
    return save_tensors(path, model.state_dict())


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``model`` (strict: every tensor must match). Never unpickles;
    a truncated or corrupted file raises ``CheckpointError`` naming it."""
    tensors, _ = load_tensors(path, what="weights file")
    model.load_state_dict(tensors, strict=True)
    return model


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
    from kdistill.distiller import call_model

    model = model.eval().cpu()
    batch = repeat_sample(example, batch_size)
    for _ in range(warmup):
        call_model(model, batch)
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        call_model(model, batch)
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 3:
            break
    return 1000 * statistics.median(times)
