"""The run directory, ``<output.dir>/<name>/``, and the rules that keep a user's files safe.

- A directory kdistill makes gets a marker, ``.kdistill-run`` (the run's name, a random id, the
  time), written when it is made, after preflight has passed.
- ``--overwrite`` replaces only a marked directory, and only if every file in it is one that a
  run writes; anything else (a project's ``src/``, a note the user left) refuses the overwrite
  before a byte is deleted.
- A run holds an advisory lock (``fcntl.flock`` on ``.kdistill-lock``, which also records the
  holder's PID) from the moment its directory is opened until it ends. A second writer, a rerun
  with ``--overwrite`` or ``--resume`` included, exits 2 naming that PID.
- A run that fails before any phase finished removes the directory it made, so the same
  command can simply be run again; one that had finished a phase keeps it for ``--resume``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import kdistill.safe_yaml as safe_yaml
from kdistill.errors import UserError
from kdistill.run.config import Recipe, dump_config

MARKER = ".kdistill-run"
LOCK = ".kdistill-lock"
# Every path (relative to the run directory) that a run, a report or an export writes.
# (fnmatch's * also matches "/": "tensorboard/*" covers every file below that folder.)
RUN_FILES = (
    MARKER, LOCK, "config.yaml", "metrics.jsonl", "metrics.tmp", "summary.json", "report.md", "report.html",
    "checkpoints", "checkpoints/*", "plots", "plots/*.png", "export", "export/*", ".*.tmp",
    "tensorboard", "tensorboard/*", "mlruns", "mlruns/*", "wandb", "wandb/*",  # output.report_to
)


def _is_run_file(relative: str) -> bool:
    return any(fnmatch(relative, pattern) for pattern in RUN_FILES)


def foreign_files(run_dir: Path) -> list[str]:
    """Paths under ``run_dir`` that no kdistill run writes."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if not _is_run_file(relative):
            found.append(relative)
    return found


def holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"


class RunLock:
    """An exclusive advisory lock on a run directory for as long as the run lasts."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a directory or an unwritable file where the lock belongs
            raise UserError(f"{self.path}: cannot lock the run directory ({error.strerror}); move it away or choose another name=") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by {holder(self.path.parent)}: wait for it to finish, "
                "or choose another name="
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_run_dir(recipe: Recipe, *, overwrite: bool, resume: bool) -> Path:
    """Whether the run may use ``<output.dir>/<name>`` as asked; touches nothing."""
    run_dir = Path(recipe.output.dir) / recipe.name
    parent = run_dir.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"output.dir: {parent} is a file, not a directory; choose another output.dir=")
    if resume:
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise UserError(f"--resume: {run_dir} holds no run to continue; run without --resume")
        try:
            started_with = Recipe.model_validate(safe_yaml.load_file(config))
        except Exception as error:  # a config.yaml edited by hand, truncated or not a recipe
            raise UserError(f"--resume: {config} is not a valid recipe ({str(error).splitlines()[0][:200]}); start a new run with name=<new name>") from None
        # Compared as written to YAML: a map with integer keys (a layer map) reads back with text keys.
        if started_with.model_dump(mode="json") != recipe.model_dump(mode="json"):
            changed = _first_difference(started_with.model_dump(mode="json"), recipe.model_dump(mode="json"))
            raise UserError(
                f"--resume: the recipe differs from {config} at {changed}; resume with the same "
                "recipe, or start a new run with name=<new name>"
            )
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file; choose another name= or output.dir=")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{run_dir} already exists: pass --resume to continue it, --overwrite to replace "
                "it, or name=<new name> for a separate run"
            )
        if not (run_dir / MARKER).is_file():
            raise UserError(
                f"{run_dir} exists and was not made by kdistill (it has no {MARKER}; runs of kdistill "
                "before 0.2 have none either): --overwrite replaces only what kdistill can prove it made; "
                "choose another name= or output.dir=, or delete that folder yourself"
            )
        strangers = foreign_files(run_dir)
        if strangers:
            raise UserError(
                f"{run_dir} holds {strangers[0]!r}, which kdistill did not write; move it away "
                "before --overwrite, or choose another name="
            )
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output.dir: {parent} is not writable; choose another output.dir=")
    return run_dir


@contextmanager
def open_run_dir(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, main: bool = True, built: dict | None = None):
    """The checked run directory, made (or replaced, or continued) and locked for the run.

    Call after preflight. On the main process only it is created or replaced; the others (DDP)
    only read it. Yields the path; a run that fails before any phase finished removes the
    directory it made.
    """
    if not main:  # it checked before the main process made anything (see the pipeline)
        yield Path(recipe.output.dir) / recipe.name
        return
    run_dir = check_run_dir(recipe, overwrite=overwrite, resume=resume)
    lock = None
    made = False
    try:
        if resume:
            lock = RunLock(run_dir).acquire()
        else:
            if run_dir.is_dir() and any(run_dir.iterdir()):
                lock = RunLock(run_dir).acquire()  # the old run is not in use: it may go
                _empty(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            identity = {"name": recipe.name, "id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (run_dir / MARKER).write_text(json.dumps(identity) + "\n")
            made = True
            lock = lock or RunLock(run_dir).acquire()
            (run_dir / "checkpoints").mkdir(exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(recipe, built))
        yield run_dir
    except BaseException:
        if made and not any((run_dir / "checkpoints").glob("*.safetensors")):
            if lock:
                lock.release()
                lock = None
            _empty(run_dir, keep_lock=False)
            run_dir.rmdir()
        raise
    finally:
        if lock:
            lock.release()


def _empty(run_dir: Path, *, keep_lock: bool = True) -> None:
    """Delete a run's own files (checked by ``check_run_dir``), deepest first. The lock file
    stays while it is held: a new one at the same path would let a second writer in."""
    for path in sorted(run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.name == LOCK and path.parent == run_dir and keep_lock:
            continue
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path or "(top level)"
