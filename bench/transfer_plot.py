"""The label-scarcity figure of issue 29: test accuracy on Rotten Tomatoes against the number
of labelled snippets, one line per row of bench/transfer_sets.py (mean ± sd over seeds).

    python bench/transfer_plot.py bench/results/transfer_sets_250.json \
        bench/results/transfer_sets.json bench/results/transfer_sets_3000.json

Reads the JSON files bench/transfer_sets.py writes (any number of N each) and draws
bench/results/transfer_sets.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 (after matplotlib.use: no display on these machines)

RESULTS = Path(__file__).resolve().parent / "results"
LINES = {
    "teacher": ("teacher (MiniLM-L6, fine-tuned on N)", "black", "--"),
    "kd_transfer": ("KD + transfer set", "tab:blue", "-"),
    "pseudo_labels": ("pseudo-labels (self-training)", "tab:orange", "-"),
    "kd_labelled": ("KD, labelled only", "tab:green", "-"),
    "scratch": ("scratch (N labelled)", "tab:gray", "-"),
}


def by_labelled(files: list[Path]) -> dict[int, dict[str, list[float]]]:
    """{N: {row: [test accuracy % per seed]}} over every file."""
    table: dict[int, dict[str, list[float]]] = {}
    for file in files:
        for n, entry in json.loads(file.read_text())["by_labelled"].items():
            rows = table.setdefault(int(n), {})
            for seed in entry["seeds"]:
                for row, accuracy in seed["accuracy"].items():
                    rows.setdefault(row, []).append(100 * accuracy)
    return dict(sorted(table.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "transfer_sets.png")
    args = parser.parse_args()
    table = by_labelled(args.results)
    figure, axes = plt.subplots(figsize=(6, 4))
    for row, (label, colour, style) in LINES.items():
        ns = [n for n in table if row in table[n]]
        means = [statistics.mean(table[n][row]) for n in ns]
        sds = [statistics.stdev(table[n][row]) if len(table[n][row]) > 1 else 0 for n in ns]
        axes.errorbar(
            ns, means, yerr=sds, label=label, color=colour, linestyle=style, marker="o", capsize=3
        )
    axes.set_xscale("log")
    axes.set_xticks(list(table), [f"{n:,}" for n in table])
    axes.minorticks_off()
    axes.set_xlabel("labelled snippets N (the rest of the 10,201 are the transfer set)")
    axes.set_ylabel("test accuracy (%), 1,275 snippets")
    axes.set_title("Rotten Tomatoes: text CNN student, mean ± sd over seeds")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
