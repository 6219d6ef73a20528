"""What a run leaves behind for people: the metrics log, the results table, report.md, plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ROLES = ("teacher", "scratch", "student")
ROLE_TITLES = {"teacher": "teacher", "scratch": "student from scratch", "student": "distilled student"}


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


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _task(summary: dict) -> dict:
    return summary.get("task") or {"metrics": ["accuracy"], "higher_is_better": {"accuracy": True}, "percent": ["accuracy"]}


def _metric(value: float, name: str, task: dict) -> str:
    return f"{100 * value:.2f}%" if name in task["percent"] else f"{value:.4f}"


def results_table(summary: dict) -> str:
    """A markdown table of the three models: the task's metrics, parameters, bytes, latency."""
    task = _task(summary)
    metrics = task["metrics"]
    rows = [
        "| model | " + " | ".join(f"test {m}" for m in metrics)
        + " | parameters | size on disk | latency b=1 (ms) | latency b=256 (ms) |",
        "|---|" + "---:|" * (len(metrics) + 4),
    ]
    for role in ROLES:
        entry = summary.get(role)
        if not entry:
            continue
        latency = entry.get("latency_ms") or {}
        b1, b256 = latency.get("batch_1"), latency.get("batch_256")
        scores = " | ".join(_metric(entry[m], m, task) for m in metrics)
        rows.append(
            f"| {ROLE_TITLES[role]} ({entry['model']}) | {scores} | "
            f"{entry['params']:,} | {_bytes(entry['bytes'])} | "
            f"{'' if b1 is None else f'{b1:.3f}'} | {'' if b256 is None else f'{b256:.2f}'} |"
        )
    return "\n".join(rows)


def verdict(summary: dict) -> str:
    """One sentence on whether distillation paid off, from the run's own numbers."""
    task = _task(summary)
    headline = task["metrics"][0]
    higher = task["higher_is_better"][headline]
    teacher, scratch, student = (summary[r][headline] for r in ROLES)
    scale = 100 if headline in task["percent"] else 1
    unit = " points" if scale == 100 else ""
    gain = scale * (student - scratch)
    compression = summary["teacher"]["params"] / max(summary["student"]["params"], 1)
    if (student > scratch) if higher else (student < scratch):
        gap = teacher - scratch
        recovered = (
            f", recovering {100 * (student - scratch) / gap:.0f}% of the teacher–scratch gap"
            if gap and (gap > 0) == higher else ""
        )
        return (
            f"Distillation helped: the distilled student's test {headline} is {gain:+.4g}{unit} "
            f"against the same student trained from scratch{recovered}, with {compression:.1f}× "
            "fewer parameters than the teacher."
        )
    return (
        f"Distillation did not beat the scratch student (test {headline} {gain:+.4g}{unit}). Check "
        "the teacher's score, the temperature and term weights, and whether the student trained "
        "long enough."
    )


def plot_history(history: list[dict], plots_dir: str | Path) -> list[Path]:
    """Training curves: each loss term per phase, and validation accuracy per phase."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    by_phase: dict[str, list[dict]] = defaultdict(list)
    for record in history:
        by_phase[record["phase"]].append(record)
    written = []

    fig, axes = plt.subplots(1, len(by_phase), figsize=(4.5 * len(by_phase), 3.5), squeeze=False)
    for ax, (phase, records) in zip(axes[0], by_phase.items()):
        epochs = [r["epoch"] for r in records]
        keys = [k for k in records[0] if k == "loss" or k.startswith("loss/")]
        for key in keys:
            ax.plot(epochs, [r[key] for r in records], marker=".", label=key)
        ax.set_title(ROLE_TITLES.get(phase, phase))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (weighted)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / "loss_terms.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    # The headline validation metric: the first val/ key the trainer logged.
    metric = next((k for r in history for k in r if k.startswith("val/") and k != "val/loss"), "val/loss")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for phase, records in by_phase.items():
        if metric in records[0]:
            ax.plot([r["epoch"] for r in records], [r[metric] for r in records], marker=".", label=ROLE_TITLES.get(phase, phase))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("/", " "))
    ax.legend()
    fig.tight_layout()
    path = plots_dir / f"val_{metric.removeprefix('val/').replace('@', '_at_')}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def write_report(run_dir: str | Path, summary: dict, plots: list[Path]) -> Path:
    run_dir = Path(run_dir)
    lines = [
        f"# {summary['name']}: {summary['method']} distillation",
        "",
        f"Data: {summary['data']['dataset']} "
        f"({', '.join(f'{k} {v}' for k, v in summary['data']['sizes'].items())}); "
        "scores on the held-out test split.",
        "",
        results_table(summary),
        "",
        verdict(summary),
        "",
        f"Latency: median of repeated CPU forward passes on {summary['latency_threads']} thread(s). "
        f"Total run time {summary['seconds']:.0f} s.",
        "",
    ]
    for path in plots:
        lines += [f"![{path.stem}](plots/{path.name})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
