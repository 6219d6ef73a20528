"""Channels-last memory layout for kdistill's own convolutional networks on the CPU.

oneDNN, PyTorch's CPU backend for convolutions, works in NHWC: a network whose weights are in
the default NCHW layout pays for reorders around every convolution. Converting the weights is
what counts; converting only the inputs changes nothing. On this project's machines (x86-64,
one thread, LeNet on 28×28 digits) a training epoch at batch 64 takes 0.67× the time and an
inference pass at batch 512 0.53× (medians of ABBA rounds, ``python bench/memory_format.py``,
bench/results/memory_format.md; PyTorch's "channels last" tutorial explains the layout).

Only the zoo's models are converted: a user's network may ``view`` a feature map as if it were
contiguous, which raises in channels-last. And only for the time of a training phase or a
cache build (``channels_last``): the model is handed back in the default layout, so what is
saved, exported or compared afterwards is as before. Values differ from the NCHW kernels'
only by float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

ZOO = "kdistill.models."


def prefers_channels_last(module: nn.Module | None, device: torch.device | str) -> bool:
    """A zoo model with 2-D convolutions, run on the CPU. Every module inside must be the zoo's
    or PyTorch's own: a zoo wrapper around a Hugging Face or user network is not converted."""
    if module is None or torch.device(device).type != "cpu":
        return False
    parts = list(module.modules())
    ours = type(module).__module__.startswith(ZOO) and all(
        type(m).__module__.startswith((ZOO, "torch.nn.")) for m in parts
    )
    return ours and any(isinstance(m, nn.Conv2d) for m in parts)


@contextlib.contextmanager
def channels_last(module: nn.Module | None, device: torch.device | str) -> Iterator[None]:
    """Run the block with ``module``'s 4-D weights in channels-last layout where it pays
    (``prefers_channels_last``), and hand them back in the default layout afterwards. The
    parameters stay the same objects (an optimizer built on them keeps working); their
    optimizer state is created in the same layout on the first step."""
    if not prefers_channels_last(module, device):
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


__all__ = ["channels_last", "prefers_channels_last"]
