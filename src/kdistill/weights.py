"""A model's weights on disk: safetensors only (never a pickle), written atomically with a
checksum (``checkpoint``), loaded strictly."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kdistill.checkpoint import load_tensors, save_tensors


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: str | Path) -> int:
    """Write ``model``'s state dict as safetensors, atomically and with a checksum; returns the
    file size in bytes."""
    return save_tensors(path, model.state_dict())


def load_weights(model: nn.Module, path: str | Path, *, expect_digest: bool = False) -> nn.Module:
    """Load safetensors weights into ``model`` (strict: every tensor must match). Never unpickles;
    a truncated or corrupted file raises ``CheckpointError`` naming it, and so does a file
    without a checksum where one is expected (``expect_digest``: kdistill wrote it)."""
    tensors, _ = load_tensors(path, what="weights file", expect_digest=expect_digest)
    model.load_state_dict(tensors, strict=True)
    return model
