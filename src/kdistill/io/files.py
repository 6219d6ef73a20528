"""Writing a report's files so that a reader (or a full disk) never leaves half of one."""

from __future__ import annotations

import os
from pathlib import Path

from kdistill.errors import UserError, disk_full, is_disk_full
from kdistill.io.manifest import record


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as error:  # a directory in the file's place, a full disk, no permission
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            kept = f"the previous {path.name}, intact" if path.exists() else "no part of it"
            raise disk_full(path, kept=kept, needed=len(data)) from None
        raise UserError(f"{path}: cannot write it ({error.strerror})") from None
    record(path)
    return path


__all__ = ["atomic_write"]
