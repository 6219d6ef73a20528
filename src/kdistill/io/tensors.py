"""Files a run writes and reads back: safetensors only (no pickle, ever), written atomically
(temporary file, then rename), with a SHA-256 digest of every tensor and another of the JSON
metadata (epoch, learning rate, optimizer and generator state) in the file's header, so a
truncated, corrupted or edited file is refused with its name instead of being silently used.
A file without a digest was not written by kdistill: it is read, and the user is told that
damage to it cannot be detected. (A training state is flattened into one such file by
kdistill.training.checkpoint.)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from kdistill.errors import UserError
from kdistill.io.files import replace_atomically

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
    replace_atomically(
        path,
        lambda tmp: save_file(tensors, str(tmp), metadata=metadata),
        catch=(OSError, SafetensorError),
        needed=sum(t.nbytes for t in tensors.values()),
        cannot="cannot write the weights ({reason}); free the path or the disk and run again",
    )
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
        raise CheckpointError(
            f"{path}: {what} metadata is corrupted or edited "
            "(checksum mismatch); delete it and run again"
        )
    try:
        return json.loads(text)
    except ValueError:
        raise CheckpointError(
            f"{path}: {what} metadata is not valid JSON; delete it and run again"
        ) from None


def load_tensors(
    path: str | Path, *, what: str = "checkpoint", expect_digest: bool = False
) -> tuple[dict[str, Tensor], dict]:
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
                f"{path}: {what} carries no checksum, but "
                "kdistill writes one into every file it makes: it "
                "was replaced or edited; delete it and run again"
            )
        _notice(
            f"{path}: {what} carries no kdistill checksum; it "
            "is used as is, and damage to it cannot be detected"
        )
    elif tensor_digest(tensors) != expected:
        raise CheckpointError(
            f"{path}: {what} is corrupted (checksum mismatch); delete it and run again"
        )
    return tensors, meta


def stored_digest(path: str | Path) -> str | None:
    """The digest ``save_tensors`` wrote into the file's header (``None``: none), read without
    its tensors: ``load_tensors(expect_digest=True)`` then checks the tensors against it."""
    return _read_header(Path(path), "tensors file").get(DIGEST_KEY)


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a file written by ``save_tensors``, checked against its digest,
    without reading its tensors."""
    path = Path(path)
    return _checked_meta(path, _read_header(path, "checkpoint"), "checkpoint")
