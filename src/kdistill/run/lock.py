"""The advisory lock of a run directory, ``.kdistill-lock`` (``fcntl.flock``, the holder's PID
written in it): a run holds it from the moment its directory is opened until it ends; ``export``
and ``report`` hold it while they rewrite the run's files, ``predict`` shares it while it reads
them. A command that finds it held exits 2 naming the holder. A leaf: ``kdistill predict`` takes
it without importing torch."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from kdistill.errors import UserError
from kdistill.io.manifest import LOCK, MARKER


def holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK).read_text().strip() or "another process"
    except OSError:
        return "another process"


class RunLock:
    """An exclusive advisory lock on a run directory for as long as the run lasts; ``shared``,
    a reader's (``kdistill predict``), which keeps writers out but not other readers, and
    needs no write access (a run without a lock file was never locked: nothing to wait for)."""

    def __init__(
        self, run_dir: Path, *, shared: bool = False, otherwise: str = "or choose another name="
    ):
        self.path = run_dir / LOCK
        self.shared, self.otherwise = shared, otherwise
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if self.shared:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return self
            return self._take(fd, fcntl.LOCK_SH)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a directory or an unwritable file where the lock belongs
            raise UserError(
                f"{self.path}: cannot lock the run directory "
                f"({error.strerror}); move it away or choose another name="
            ) from None
        self._take(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()}\n".encode())
        return self

    def _take(self, fd: int, kind: int) -> RunLock:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by {holder(self.path.parent)}: "
                f"wait for it to finish, {self.otherwise}"
            ) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            if not self.shared:
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextmanager
def holding(folder: str | Path, *, shared: bool = False):
    """The lock of the run ``folder`` is (or is the ``export/`` of), held while a command reads
    or rewrites its files, so that a ``run --overwrite`` cannot delete them underneath; a
    folder that is not a run's is not locked."""
    folder = Path(folder)
    try:
        run_dir = next((d for d in (folder, folder.parent) if (d / MARKER).is_file()), None)
    except OSError:  # a name longer than the file system takes: the command says so itself
        run_dir = None
    lock = (
        RunLock(run_dir, shared=shared, otherwise="then run this again").acquire()
        if run_dir is not None
        else None
    )
    try:
        yield
    finally:
        if lock:
            lock.release()
