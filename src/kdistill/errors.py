"""Errors a user can fix. The command line prints their message as one line and exits 2."""


class UserError(Exception):
    """Bad input: a recipe, a file, a path or data. The message names it and says what fixes it."""


class DataError(UserError):
    """Data that cannot be loaded or used as given."""


class ConfigError(UserError):
    """A recipe that does not validate."""


class ArgumentError(UserError, ValueError):
    """An argument of the Python API out of its range; the message names it and its range."""


class DiskFullError(UserError):
    """A write that found no space on its disk. The message names the disk, the space the
    write needed and what was kept; a caller that knows more of what was kept adds it."""


# errno 28 (ENOSPC) and 122 (EDQUOT, a quota: full for this user): safetensors reports them
# in its own error's text ("... (os error 28)"), not as an OSError.
DISK_FULL_ERRNOS = (28, 122)


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    return any(f"os error {number})" in str(error) for number in DISK_FULL_ERRNOS)


def byte_size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def disk_full(path, *, kept: str, needed: int | None = None) -> DiskFullError:
    """The one line for a write to ``path`` that failed for want of space: the disk (where it
    is mounted, what is free), what the write needed and what was ``kept``."""
    import os
    import shutil
    from pathlib import Path

    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path.cwd()).resolve()
    mount = existing
    while not os.path.ismount(mount):
        mount = mount.parent
    free = shutil.disk_usage(existing).free
    need = f", {byte_size(needed)} needed" if needed else ""
    return DiskFullError(
        f"{path}: the disk mounted at {mount} is full ({byte_size(free)} free{need}); "
        f"kept: {kept}. Free space there or choose another disk"
    )


def first_difference(a, b, path: str = "") -> str | None:
    """Where two settings trees (JSON-like dicts: a recipe, a cache's fingerprint) first
    differ, as a dotted path (``train.lr``) for a message; ``(top level)`` where they differ
    but not inside a shared mapping; None where they are equal. Keys are read in ``a``'s order,
    then ``b``'s new ones."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else (path or "(top level)")
