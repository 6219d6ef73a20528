"""Files a run writes and reads back: safetensors only (no pickle, ever), written atomically
(temporary file, then rename), with a SHA-256 digest of every tensor and another of the JSON
metadata (epoch, learning rate, optimizer and generator state) in the file's header, so a
truncated, corrupted or edited file is refused with its name instead of being silently used.
A file without a digest was not written by kdistill: it is read, and the user is told that
damage to it cannot be detected.

A training state (weights, optimizer, scheduler, every random generator, position in the data)
is flattened into one such file: tensors as tensors, everything else as JSON metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdistill.errors import UserError, disk_full, is_disk_full
from kdistill.manifest import record

FORMAT_KEY = "kdistill"
DIGEST_KEY = "kdistill.sha256"  # over the tensors (names, dtypes, shapes, bytes)
META_DIGEST_KEY = "kdistill.meta.sha256"  # over the FORMAT_KEY text, exactly as stored


class CheckpointError(UserError):
    """A checkpoint or cache file that is missing, truncated, corrupted or of the wrong kind."""


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, Tensor], meta: dict | None = None) -> int:
    """Write ``tensors`` (+ JSON-able ``meta``) atomically; returns the file size in bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cloning breaks storage sharing (tied weights), which safetensors refuses to write.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    metadata = {DIGEST_KEY: tensor_digest(tensors)}
    if meta is not None:
        metadata[FORMAT_KEY] = json.dumps(meta)
        metadata[META_DIGEST_KEY] = _text_digest(metadata[FORMAT_KEY])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except (OSError, SafetensorError) as error:  # a directory in the way, a full disk, no rights
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            kept = f"the previous {path.name}, intact" if path.exists() else "no part of it"
            needed = sum(t.nbytes for t in tensors.values())
            raise disk_full(path, kept=kept, needed=needed) from None
        if not isinstance(error, OSError):
            raise
        raise UserError(f"{path}: cannot write the weights ({error.strerror}); free the path or the disk and run again") from None
    record(path)
    return path.stat().st_size


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _notice(message: str) -> None:
    # A leaf module has no echo of its own; stderr keeps stdout (tables, reports) clean.
    print(f"note: {message}", file=sys.stderr)


def _read_header(path: Path, what: str) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: unreadable {what} (truncated or not a safetensors file: {str(error)[:120]}); "
            "delete it and run again"
        ) from None


def _checked_meta(path: Path, metadata: dict[str, str], what: str) -> dict:
    """The JSON metadata, refused unless its digest matches: kdistill writes both or neither."""
    if FORMAT_KEY not in metadata:
        return {}
    text = metadata[FORMAT_KEY]
    expected = metadata.get(META_DIGEST_KEY)
    if expected is None:
        raise CheckpointError(
            f"{path}: {what} has kdistill metadata without its checksum (edited, or written by an "
            "older kdistill); delete it and run again"
        )
    if _text_digest(text) != expected:
        raise CheckpointError(f"{path}: {what} metadata is corrupted or edited (checksum mismatch); delete it and run again")
    try:
        return json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path}: {what} metadata is not valid JSON; delete it and run again") from None


def load_tensors(path: str | Path, *, what: str = "checkpoint", expect_digest: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Read a safetensors file, verifying its digests.

    A file without a digest (from another tool, e.g. a user's teacher weights) is read without
    unpickling anything, with a note that damage to it cannot be detected; with
    ``expect_digest`` (a file kdistill wrote itself and reads back) it is refused.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    metadata = _read_header(path, what)
    meta = _checked_meta(path, metadata, what)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: unreadable {what} (truncated or not a safetensors file: {str(error)[:120]}); "
            "delete it and run again"
        ) from None
    expected = metadata.get(DIGEST_KEY)
    if expected is None:
        if expect_digest:
            raise CheckpointError(
                f"{path}: {what} carries no checksum, but kdistill writes one into every file it makes: "
                "it was replaced or edited; delete it and run again"
            )
        _notice(f"{path}: {what} carries no kdistill checksum; it is used as is, and damage to it cannot be detected")
    elif tensor_digest(tensors) != expected:
        raise CheckpointError(f"{path}: {what} is corrupted (checksum mismatch); delete it and run again")
    return tensors, meta


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a file written by ``save_tensors``, checked against its digest,
    without reading its tensors."""
    path = Path(path)
    return _checked_meta(path, _read_header(path, "checkpoint"), "checkpoint")


# --- training state --------------------------------------------------------------------------


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(values) for i, values in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict]:
    """Every global random generator a training step may draw from."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    plain = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), gauss_next]}
    return tensors, plain


def set_rng_state(tensors: dict[str, Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(
    path: str | Path, *, model: torch.nn.Module, optimizer, scheduler, progress: dict,
    progress_tensors: dict[str, Tensor],
) -> None:
    """One atomic file with everything needed to continue exactly where training stopped."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_plain = rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    tensors.update({f"progress.{k}": v for k, v in progress_tensors.items()})
    meta = {
        "format": "kdistill-training-state/1",
        "progress": progress,
        "optimizer": opt_plain,
        "scheduler": scheduler.state_dict(),
        "rng": rng_plain,
    }
    save_tensors(path, tensors, meta)


def load_training_state(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    tensors, meta = load_tensors(path, what="training checkpoint", expect_digest=True)
    if meta.get("format") != "kdistill-training-state/1":
        raise CheckpointError(f"{path}: not a kdistill training checkpoint")
    return tensors, meta


def restore_training_state(tensors: dict[str, Tensor], meta: dict, *, model, optimizer, scheduler) -> dict[str, Tensor]:
    """Load weights, optimizer and scheduler; returns the ``progress.*`` tensors. The global
    generators are restored separately, by the caller, at the right moment."""
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    return {k.removeprefix("progress."): v for k, v in tensors.items() if k.startswith("progress.")}
