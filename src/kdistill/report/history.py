"""The metrics log of a run, ``metrics.jsonl``: append-only JSON lines, one record per epoch
and phase; the source of truth for every curve and every phase's training time."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Append-only JSON lines, one record per epoch and phase (``metrics.jsonl``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def seconds(self, phase: str) -> float:
        """Training seconds of a phase, summed over its logged epochs."""
        return round(sum(r.get("seconds", 0.0) for r in self.read() if r["phase"] == phase), 2)

    def drop_from(self, phase: str, epoch: int) -> None:
        """Forget ``phase``'s records from ``epoch`` on: a resumed run writes them again."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if not (r["phase"] == phase and r["epoch"] >= epoch)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)
