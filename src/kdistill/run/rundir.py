"""The run directory, ``<output.dir>/<name>/``, and the rules that keep a user's files safe.

- A directory kdistill makes gets a marker, ``.kdistill-run`` (the run's name, a random id, the
  time), written when it is made, after preflight has passed.
- The run lists every file it (its report, its export, its trackers) wrote, with its size and
  time, in ``.kdistill-files`` (``kdistill.io.manifest``). ``--overwrite`` replaces only a marked
  directory with such a list, and only if every file in it is on the list as written: anything
  else (a project's ``src/``, a note or a kept checkpoint of the user's, a file edited since)
  refuses the overwrite before a byte is deleted. No pattern decides what goes.
- A run holds an advisory lock (``fcntl.flock`` on ``.kdistill-lock``, which also records the
  holder's PID) from the moment its directory is opened until it ends. A second writer, a rerun
  with ``--overwrite`` or ``--resume`` included, exits 2 naming that PID.
- A run that fails before any phase finished removes the directory it made, so the same
  command can simply be run again; one that had finished a phase keeps it for ``--resume``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import kdistill.io.manifest as manifest
import kdistill.io.safe_yaml as safe_yaml
from kdistill.errors import UserError, first_difference
from kdistill.io.manifest import BOOKKEEPING, LOCK, MANIFEST, MARKER
from kdistill.run.config import Recipe, dump_config
from kdistill.run.lock import RunLock
from kdistill.run.trackers import FOLDERS


def foreign_files(run_dir: Path) -> list[str]:
    """What under ``run_dir`` is not the run's own, each with why: a file its list
    (``.kdistill-files``) does not hold, or holds at another size or time (changed since), or a
    folder no listed file is in. Without a list, the whole directory is foreign."""
    listed = manifest.read(run_dir)
    if listed is None:
        return [f"{MANIFEST} (the list of the run's files) is missing or damaged"]
    return [f"{relative!r}, which {why}" for relative, why in _entries(run_dir, listed) if why]


def _entries(run_dir: Path, listed: dict) -> list[tuple[str, str | None]]:
    """Every path under ``run_dir``, deepest first, with why it is not the run's own (None: it is).
    Symbolic links are never followed: a link is a stranger, whatever it points to."""
    files = listed["files"]
    folders = set(listed["folders"])
    folders |= {parent.as_posix() for name in files for parent in Path(name).parents}
    found = []
    for root, subfolders, names in os.walk(run_dir):
        here = Path(root).relative_to(run_dir)
        for name in names + [d for d in subfolders if (Path(root) / d).is_symlink()]:
            relative, path = (here / name).as_posix(), Path(root) / name
            if relative in BOOKKEEPING:
                why = None
            elif relative not in files or path.is_symlink():
                why = "kdistill did not write"
            else:
                why = (
                    None
                    if manifest.matches(path, files[relative])
                    else "changed since the run wrote it"
                )
            found.append((relative, why))
        for name in subfolders:
            relative = (here / name).as_posix()
            if not (Path(root) / name).is_symlink():
                found.append((relative, None if relative in folders else "kdistill did not make"))
    return sorted(found, key=lambda entry: (-entry[0].count("/"), entry[0]))


def check_run_dir(recipe: Recipe, *, overwrite: bool, resume: bool) -> Path:
    """Whether the run may use ``<output.dir>/<name>`` as asked; touches nothing."""
    run_dir = Path(recipe.output.dir) / recipe.name
    parent = run_dir.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(
            f"output.dir: {parent} is a file, not a directory; choose another output.dir="
        )
    if resume:
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise UserError(f"--resume: {run_dir} holds no run to continue; run without --resume")
        try:
            started_with = Recipe.model_validate(safe_yaml.load_file(config))
        except Exception as error:  # a config.yaml edited by hand, truncated or not a recipe
            raise UserError(
                f"--resume: {config} is not a valid recipe ({str(error).splitlines()[0][:200]}); "
                "start a new run with name=<new name>"
            ) from None
        # Compared as written to YAML: a map with integer keys (a layer map) reads back with text
        # keys.
        if started_with.model_dump(mode="json") != recipe.model_dump(mode="json"):
            changed = first_difference(
                started_with.model_dump(mode="json"), recipe.model_dump(mode="json")
            )
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
                f"{run_dir} exists and was not made by kdistill "
                f"(it has no {MARKER}; runs of kdistill before 0.2 have none either): --overwrite "
                "replaces only what kdistill can prove it made; choose another name= or "
                "output.dir=, or delete that folder yourself"
            )
        if manifest.read(run_dir) is None:
            raise UserError(
                f"{run_dir} keeps no list of the files its run wrote ({MANIFEST}; runs of "
                "kdistill before 0.3 have none): --overwrite deletes only files on that list; "
                "choose another name=, or delete that folder yourself"
            )
        strangers = foreign_files(run_dir)
        if strangers:
            raise UserError(
                f"{run_dir} holds {strangers[0]}; move it away before --overwrite, or choose "
                "another name="
            )
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output.dir: {parent} is not writable; choose another output.dir=")
    return run_dir


@contextmanager
def open_run_dir(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    main: bool = True,
    built: dict | None = None,
):
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
            identity = {
                "name": recipe.name,
                "id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (run_dir / MARKER).write_text(json.dumps(identity) + "\n")
            made = True
            lock = lock or RunLock(run_dir).acquire()
            (run_dir / "checkpoints").mkdir(exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(recipe, built))
            manifest.record(run_dir / "checkpoints", run_dir / "config.yaml")
        yield run_dir
    except BaseException:
        # Only while this run holds the lock: emptied under it, so that no other writer comes
        # in between; the lock file goes last, just before the lock is let go.
        if made and lock and not any((run_dir / "checkpoints").glob("*.safetensors")):
            for name in recipe.output.report_to:  # a tracker left open by the failure: this run's
                manifest.record_tree(run_dir / FOLDERS[name])
            stayed = _empty(run_dir)
            (run_dir / LOCK).unlink(missing_ok=True)
            lock.release()
            lock = None
            if stayed == [LOCK]:
                run_dir.rmdir()
        raise
    finally:
        if lock:
            lock.release()


def _empty(run_dir: Path) -> list[str]:
    """Delete the run's own files and folders (``check_run_dir`` refused any other), deepest
    first; returns what stayed. The lock file stays while it is held: a new one at the same
    path would let a second writer in."""
    listed = manifest.read(run_dir) or {"files": {}, "folders": []}
    stayed = []
    for relative, why in _entries(run_dir, listed):
        path = run_dir / relative
        if why or relative == LOCK or (path.is_dir() and any(path.iterdir())):
            stayed.append(relative)
        elif path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    return stayed
