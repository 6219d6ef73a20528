"""Writing a file so that a reader (or a full disk) never sees half of one: the one home of the
temporary-file-then-rename that reports, summaries and checked tensor files use; and the digest
of a file's bytes that checks, on reading, what was written."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from kdistill.errors import UserError, disk_full, is_disk_full
from kdistill.io.manifest import record


def replace_atomically(
    path: Path,
    write: Callable[[Path], object],
    *,
    needed: int,
    catch: tuple[type[BaseException], ...] = (OSError,),
    cannot: str = "cannot write it ({reason})",
) -> Path:
    """``write`` the file's content to a temporary file beside ``path``, then rename it over
    ``path``: readers see the old content or the new, never half. A full disk says what was
    kept; another ``OSError`` is one line, ``cannot`` with its ``reason``; other errors of
    ``catch`` go on. No failure, an interrupt included, leaves the temporary file behind: it
    would be a file of the run's that its list (``.kdistill-files``) does not hold."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX
    except catch as error:  # a directory in the file's place, a full disk, no permission
        if is_disk_full(error):
            kept = f"the previous {path.name}, intact" if path.exists() else "no part of it"
            raise disk_full(path, kept=kept, needed=needed) from None
        if not isinstance(error, OSError):
            raise
        raise UserError(f"{path}: {cannot.format(reason=error.strerror)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    record(path)
    return path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a file so that readers see the old or the new content, never half of it."""
    content = data.encode() if isinstance(data, str) else data
    return replace_atomically(Path(path), lambda tmp: tmp.write_bytes(content), needed=len(data))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, read in blocks (``hashlib.file_digest`` from 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["atomic_write", "file_sha256", "replace_atomically"]
