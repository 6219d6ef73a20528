"""A model's weights on disk. kdistill writes safetensors only (never a pickle), atomically and
with a checksum (``checkpoint``). It reads what users hold: safetensors, a PyTorch
``state_dict`` file (``.pt`` / ``.pth`` / ``.bin``, read only with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers and nothing
else) and a Hugging Face directory.
Loading is strict: missing and unexpected tensors are named.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdistill.io.tensors import CheckpointError, load_tensors, save_tensors

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# The weight files a Hugging Face directory holds, in the order transformers prefers them.
HF_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys under which training scripts (Lightning, the PyTorch examples) nest the state_dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
HOW_TO_SAVE = (
    "save the weights with torch.save(model.state_dict(), "
    "'teacher.pt') (or safetensors.torch.save_file)"
)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: str | Path) -> int:
    """Write ``model``'s state dict as safetensors, atomically and with a checksum; returns the
    file size in bytes."""
    return save_tensors(path, model.state_dict())


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a PyTorch ``state_dict`` file, without running any pickled code: a file
    holding a whole pickled module (``torch.save(model)``) or any other object is refused."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        AttributeError,
        TypeError,
        ValueError,
        EOFError,
    ) as error:
        reason = (
            str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        )
        raise CheckpointError(
            f"{path}: not a plain state_dict, it holds a pickled object ({reason}); {HOW_TO_SAVE}"
        ) from None
    if isinstance(loaded, Mapping):
        nested = [k for k in NESTED_KEYS if isinstance(loaded.get(k), Mapping)]
        if nested and not all(isinstance(v, Tensor) for v in loaded.values()):
            loaded = loaded[nested[0]]
    if not (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())
    ):
        raise CheckpointError(
            f"{path}: holds a {type(loaded).__name__}, not "
            f"a state_dict of named tensors; {HOW_TO_SAVE}"
        )
    return dict(loaded)


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in HF_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: a directory without {' or '.join(HF_FILES)} "
            "(a Hugging Face model directory has one)"
        )
    return path


def read_weights(path: str | Path, *, expect_digest: bool = False) -> dict[str, Tensor]:
    """The named tensors of a safetensors file, a state_dict file or a Hugging Face directory."""
    file = _weights_file(Path(path))
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    if file.suffix.lower() in TORCH_SUFFIXES and not expect_digest:
        return read_state_dict(file)
    tensors, _ = load_tensors(file, what="weights file", expect_digest=expect_digest)
    return tensors


def _with_prefix(model: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A model that wraps the saved one (kdistill's ``HFModel`` holds the Hugging Face model as
    ``.model``) reads its weights under that child's name; anything else is left as it is."""
    wanted = set(model.state_dict())
    if wanted & set(tensors):
        return tensors
    for child, _ in model.named_children():
        renamed = {f"{child}.{k}": v for k, v in tensors.items()}
        if set(renamed) <= wanted and len(renamed) >= len(tensors):
            return renamed
    return tensors


def _same_graph(model: nn.Module, path: Path) -> nn.Module:
    """An ONNX teacher (``OnnxModel``) holds its graph's digest: the file must be that graph."""
    digest = hashlib.sha256(path.read_bytes()).digest()
    if bytes(model.onnx_sha256.tolist()) != digest:
        raise CheckpointError(
            f"{path}: another ONNX graph than the teacher's {getattr(model, 'path', '')}"
        )
    return model


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return f"{shown} (+{len(keys) - 5} more)" if len(keys) > 5 else shown


def load_weights(model: nn.Module, path: str | Path, *, expect_digest: bool = False) -> nn.Module:
    """Load weights into ``model`` strictly: every tensor must be there and fit.

    Never unpickles code; a truncated or corrupted file raises ``CheckpointError`` naming it, and
    so does a file without a checksum where one is expected (``expect_digest``: kdistill wrote
    it). Missing and unexpected tensors, and tensors of another shape, are named.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx" and hasattr(model, "onnx_sha256"):
        return _same_graph(model, path)
    tensors = _with_prefix(model, read_weights(path, expect_digest=expect_digest))
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in tensors]
    unexpected = [k for k in tensors if k not in wanted]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(
            f"{path}: does not fit the {type(model).__name__}: {'; '.join(parts)}"
        )
    shapes = [
        f"{k} {tuple(v.shape)} in the file, {tuple(wanted[k].shape)} in the model"
        for k, v in tensors.items()
        if v.shape != wanted[k].shape
    ]
    if shapes:
        raise CheckpointError(
            f"{path}: does not fit the {type(model).__name__}: {shapes[0]}"
            + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else "")
        )
    model.load_state_dict(tensors, strict=True)
    return model


__all__ = ["count_parameters", "load_weights", "read_state_dict", "read_weights", "save_weights"]
