"""The list of files a run wrote, ``.kdistill-files`` beside its marker: what ``--overwrite`` may
delete, and nothing else.

Each writer of a run's files (checkpoints, the metrics log, plots, the summary and the report,
an export, a tracker's folder once it closed) calls ``record(path)`` once the file is complete.
The entry is the file's path relative to its run directory, the nearest folder above it that
holds the run's marker, and its size and modification time then: a file a user later put at the same
path, or edited, no longer matches. A path outside any run directory is not recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MARKER = ".kdistill-run"
LOCK = ".kdistill-lock"
MANIFEST = ".kdistill-files"
# The run's own bookkeeping, at the top of its directory: never listed, always its own.
BOOKKEEPING = (MARKER, LOCK, MANIFEST)
DEPTH = 3  # export/hf_student/<file> is the deepest a writer records one file at a time


def run_dir_of(path: Path) -> Path | None:
    """The run directory ``path`` lies in (its marker within ``DEPTH`` folders up), or None."""
    for folder in list(path.absolute().parents)[:DEPTH]:
        if (folder / MARKER).is_file():
            return folder
    return None


def read(run_dir: Path) -> dict | None:
    """``{"files": {path: (size, mtime_ns)}, "folders": [path]}``, or None when the run keeps no
    list (a run of kdistill before 0.3, or a folder that only has a marker) or it is not one."""
    try:
        listed = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(listed, dict):
        return None
    files, folders = listed.get("files"), listed.get("folders", [])
    if not isinstance(files, dict) or not isinstance(folders, list):
        return None
    return {
        "files": {name: tuple(seen) for name, seen in files.items() if _is_stamp(seen)},
        "folders": [folder for folder in folders if isinstance(folder, str)],
    }


def stamp(path: Path) -> tuple[int, int]:
    """What identifies the file the run wrote: its size and its modification time in
    nanoseconds. A user's file put at the same path later (a fine-tuned checkpoint of the very
    same size, say) was written at another moment."""
    status = path.lstat()
    return status.st_size, status.st_mtime_ns


def matches(path: Path, listed: tuple[int, int] | None) -> bool:
    """Whether ``path`` is still the file its run listed as ``listed``."""
    return listed is not None and not path.is_symlink() and path.is_file() and stamp(path) == listed


def _is_stamp(seen) -> bool:
    return isinstance(seen, list) and len(seen) == 2 and all(type(n) is int for n in seen)


def record(*paths: Path, run_dir: Path | None = None) -> None:
    """Add the files (or folders) ``paths`` to the list of the run directory they lie in (or of
    ``run_dir``, when the caller knows it)."""
    by_run: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        home = run_dir or run_dir_of(path)
        if home is not None and path.exists() and not path.is_symlink():  # a link is never ours
            by_run.setdefault(home, []).append(path)
    for home, found in by_run.items():
        listed = read(home) or {"files": {}, "folders": []}
        for path in found:
            relative = path.absolute().relative_to(home.absolute()).as_posix()
            if path.is_dir():
                listed["folders"] = sorted({*listed["folders"], relative})
            else:
                listed["files"][relative] = stamp(path)
        _write(home / MANIFEST, listed)


def record_tree(folder: Path) -> None:
    """Every file and folder under ``folder``, at any depth (a tracker's, once it closed:
    third-party code chose their names)."""
    run_dir = run_dir_of(folder / MARKER)
    found = [folder]
    for root, folders, files in os.walk(folder):
        found += [Path(root, name) for name in (*folders, *files)]
    if run_dir is not None:
        record(*found, run_dir=run_dir)


def _write(path: Path, listed: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(listed, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def unrecorded(paths) -> list[Path]:
    """Those of ``paths`` that exist but are not on their run's list as they are now (a
    file of the user's where kdistill would write one)."""
    strangers = []
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            continue
        run_dir = run_dir_of(path)
        listed = read(run_dir) if run_dir is not None else None
        relative = path.absolute().relative_to(run_dir.absolute()).as_posix() if listed else None
        if listed is None or not matches(path, listed["files"].get(relative)):
            strangers.append(path)
    return strangers
