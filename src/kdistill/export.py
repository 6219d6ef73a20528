"""Measuring what a student won: parameters, bytes on disk, CPU latency. (ONNX export joins here.)"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: str | Path) -> int:
    """Write ``model``'s state dict as safetensors; returns the file size in bytes."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path.stat().st_size


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``model`` (strict: every tensor must match)."""
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True, device="cpu")
    return model


@torch.inference_mode()
def measure_latency(
    model: nn.Module, example: Tensor, *, batch_size: int = 1, repeats: int = 30, warmup: int = 5,
    budget_s: float = 2.0,
) -> float:
    """Median wall time in milliseconds of one forward pass on a batch built from ``example``
    (one sample, without the batch axis), on the CPU in eval mode.

    Stops early after ``budget_s`` seconds of timed passes so a large teacher cannot stall a run.
    """
    model = model.eval().cpu()
    batch = example.unsqueeze(0).expand(batch_size, *example.shape).contiguous().cpu()
    for _ in range(warmup):
        model(batch)
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 3:
            break
    return 1000 * statistics.median(times)
