"""The run's plots: training curves per term and validation metric, and the diagnostics
(calibration, per-class accuracy, confusion), drawn with matplotlib's Agg backend."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from kdistill.io.files import atomic_write
from kdistill.report.roles import ROLE_TITLES, ROLES, role_title


def _save(fig, path: Path) -> None:
    """Draw ``fig`` in memory and write it in one step: a full disk leaves no half-drawn PNG."""
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, image.getvalue())


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
        ax.set_title(role_title(phase))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (weighted)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / "loss_terms.png"
    _save(fig, path)
    written.append(path)

    # The headline validation metric: the first val/ key the trainer logged.
    metric = next(
        (k for r in history for k in r if k.startswith("val/") and k != "val/loss"), "val/loss"
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for phase, records in by_phase.items():
        if metric in records[0]:
            ax.plot(
                [r["epoch"] for r in records],
                [r[metric] for r in records],
                marker=".",
                label=role_title(phase),
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("/", " "))
    ax.legend()
    fig.tight_layout()
    path = plots_dir / f"val_{metric.removeprefix('val/').replace('@', '_at_')}.png"
    _save(fig, path)
    written.append(path)
    return written


def plot_diagnostics(diagnostics: dict | None, plots_dir: str | Path) -> list[Path]:
    """Reliability diagrams and confusion matrices of each model (``diagnostics`` of a summary)."""
    if not diagnostics:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    roles = [r for r in ROLES if r in diagnostics["reliability"]]
    written = []

    fig, axes = plt.subplots(1, len(roles), figsize=(4 * len(roles), 4), squeeze=False)
    for ax, role in zip(axes[0], roles):
        table = diagnostics["reliability"][role]
        edges = table["edges"]
        width = edges[1] - edges[0]
        filled = [i for i, n in enumerate(table["count"]) if n]
        ax.bar(
            [edges[i] for i in filled],
            [table["accuracy"][i] for i in filled],
            width=width,
            align="edge",
            edgecolor="black",
            color="#4c72b0",
            label="accuracy",
        )
        # Guo et al.'s layout: the gap bar spans accuracy → mean confidence of the bin.
        ax.bar(
            [edges[i] for i in filled],
            [table["confidence"][i] - table["accuracy"][i] for i in filled],
            bottom=[table["accuracy"][i] for i in filled],
            width=width,
            align="edge",
            color="#c44e52",
            alpha=0.3,
            hatch="//",
            edgecolor="#c44e52",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top-1 probability)",
            ylabel="accuracy",
            title=f"{ROLE_TITLES[role]}\nECE {diagnostics['ece'][role]:.3f}",
        )
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = plots_dir / "reliability.png"
    _save(fig, path)
    written.append(path)

    names = diagnostics["class_names"]
    fig, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 4), squeeze=False)
    for ax, role in zip(axes[0], roles):
        counts = diagnostics["confusion"][role]
        totals = [max(sum(row), 1) for row in counts]
        ax.imshow(
            [[c / t for c in row] for row, t in zip(counts, totals)], cmap="Blues", vmin=0, vmax=1
        )
        if len(names) <= 12:  # counts stay readable up to about a dozen classes
            for i, row in enumerate(counts):
                for j, count in enumerate(row):
                    if count:
                        ax.text(
                            j,
                            i,
                            str(count),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if count / totals[i] > 0.5 else "black",
                        )
        if len(names) <= 20:
            ax.set_xticks(
                range(len(names)), names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=7
            )
            ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(xlabel="predicted class", ylabel="true class", title=ROLE_TITLES[role])
    fig.tight_layout()
    path = plots_dir / "confusion.png"
    _save(fig, path)
    written.append(path)
    return written


# --- the report ----------------------------------------------------------------------------
# A report is a list of blocks, rendered to markdown here and to HTML in ``report_html``:
# ("heading", level, text), ("paragraph", text), ("list", [text]), ("table", header, rows),
# ("image", path relative to the run directory, alt text).

DIAGNOSTIC_PLOTS = ("reliability", "confusion")
