"""The metrics log of a run, ``metrics.jsonl``: append-only JSON lines, one record per epoch
and phase; the source of truth for every curve and every phase's training time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kdistill.io.manifest as manifest
from kdistill.errors import UserError
from kdistill.io.files import atomic_write


class MetricsLog:
    """Append-only JSON lines, one record per epoch and phase (``metrics.jsonl``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        self._drop_torn_tail()
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        manifest.record(self.path)

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (a crash or a full disk mid-append), so the next
        record starts on a line of its own."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            start = f.read().rfind(b"\n") + 1
            f.seek(start)
            try:
                json.loads(f.read())
                f.write(b"\n")  # a whole record that only lost its newline
            except ValueError:
                f.truncate(start)

    def read(self) -> list[dict]:
        """Every record; an incomplete last one is dropped with a note, a damaged one before it
        is refused (exit 2) naming its line."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number < len(lines):
                    raise UserError(
                        f"{self.path}: line {number} is not a JSON "
                        "record; remove that line and run again"
                    ) from None
                print(
                    f"note: {self.path}: dropped its incomplete last line (an interrupted write)",
                    file=sys.stderr,
                )
        return records

    def seconds(self, phase: str) -> float:
        """Training seconds of a phase, summed over its logged epochs."""
        return round(sum(r.get("seconds", 0.0) for r in self.read() if r["phase"] == phase), 2)

    def drop_from(self, phase: str, epoch: int) -> None:
        """Forget ``phase``'s records from ``epoch`` on: a resumed run writes them again."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if not (r["phase"] == phase and r["epoch"] >= epoch)]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
