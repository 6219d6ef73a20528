"""The race to quality over seeds: bench/llm.py's results for several ``--seed`` values (another
draw and order of the training windows each) side by side, with the mean and the spread of what
one race reports once: the time to TRL's quality, and the perplexity at TRL's wall time.

    python bench/llm.py --repeats 1 --losses forward_kl --seed 1 --results DIR1   # and so on
    python bench/llm_seeds.py bench/results/llm.json DIR1/llm.json DIR2/llm.json
    python bench/llm_seeds.py --name llm_seeds_jsd DIR0/llm.json ...   # races of --losses jsd
    python bench/llm_seeds.py --loss jsd ...   # the JSD rows of races that ran several losses

Writes bench/results/<--name, default llm_seeds>.md and .json (each seed's figures and the
command); one loss a table, the races' first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(report: dict, loss: str | None = None) -> dict:
    """One race's figures for the table: ``loss``'s (default the first loss's, as its JSON keys
    are). The equal-wall run is the first loss's alone: another loss has none."""
    loss = loss or report["main_loss"]
    if loss not in report["by_loss"]:
        raise SystemExit(f"bench/llm_seeds.py: a race without {loss} (--loss)")
    ways = report["by_loss"][loss]
    race = report.get("race_by_loss", {}).get(loss, report)  # older reports: the first loss's
    equal = (report.get("equal_wall") or {}) if loss == report["main_loss"] else {}
    return {
        "loss": loss,
        "precision": report["settings"].get("precision", "fp32"),
        "seed": report["settings"]["seed"],
        "trl_s": ways["trl"]["train_s"],
        "trl_ppl": ways["trl"]["ppl"],
        "cache_build_s": report["prepared"].get("cache_build_s", 0.0),
        "live_vs_trl_tokens": ways["kdistill_live"]["tokens_per_s"] / ways["trl"]["tokens_per_s"],
        "cached_vs_trl_tokens": ways["kdistill_cached"]["tokens_per_s"]
        / ways["trl"]["tokens_per_s"],
        "time_to_trl_quality_ratio": race["time_to_trl_quality_ratio"],
        "time_to_trl_quality_ratio_cache_reused": race["time_to_trl_quality_ratio_cache_reused"],
        "equal_wall_steps": equal.get("steps"),
        "cached_equal_wall_ppl": equal.get("ppl"),
    }


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return "—"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def reached_text(ratio: float | None) -> str:
    return "not reached" if ratio is None else f"{ratio:.2f}"


def markdown(rows: list[dict], command: str) -> str:
    loss, precision = rows[0]["loss"], rows[0]["precision"]
    flag = "" if precision == "fp32" else f" --precision {precision}"
    lines = [
        f"# Language-model race over seeds ({loss}): time to TRL's quality, and quality at "
        "TRL's time",
        "",
        f"Command: `{command}`",
        "",
        f"Each seed is a whole race, `python bench/llm.py --repeats 1 --losses {loss}{flag} "
        "--seed N` (one thread), on another draw and order of the training windows; the cached "
        "way reads the hidden-state cache and its clock includes the build. time/TRL: the "
        "cached way's wall time to TRL's end-of-budget held-out perplexity over TRL's training "
        "time (target ≤ 0.5); at TRL's time: the cached way given TRL's wall time, build "
        "included.",
        "",
        "| seed | TRL s | TRL ppl | build s | tokens/s vs TRL (live, cached) | time/TRL | "
        "time/TRL, cache reused | at TRL's time: steps | at TRL's time: ppl |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reached = r["time_to_trl_quality_ratio"]
        lines.append(
            f"| {r['seed']} | {r['trl_s']:.1f} | {r['trl_ppl']:.2f} | {r['cache_build_s']:.1f} | "
            f"{r['live_vs_trl_tokens']:.2f}×, {r['cached_vs_trl_tokens']:.2f}× | "
            + reached_text(reached)
            + f" | {reached_text(r['time_to_trl_quality_ratio_cache_reused'])} | "
            + (
                f"{r['equal_wall_steps']} | {r['cached_equal_wall_ppl']:.2f} |"
                if r["cached_equal_wall_ppl"] is not None
                else "— | — |"
            )
        )
    equal = [r for r in rows if r["cached_equal_wall_ppl"] is not None]
    beats = sum(r["cached_equal_wall_ppl"] < r["trl_ppl"] for r in equal)
    reached = [r["time_to_trl_quality_ratio"] for r in rows if r["time_to_trl_quality_ratio"]]
    lines += [
        "",
        f"time/TRL over the {len(reached)} of {len(rows)} seeds that reached TRL's perplexity: "
        f"{spread(reached)} (cache reused: "
        f"{spread([r['time_to_trl_quality_ratio_cache_reused'] for r in rows])}). "
        f"At TRL's wall time the cached way's perplexity is below TRL's on {beats} of "
        f"{len(equal)} seeds; the difference, TRL's minus the cached way's: "
        f"{spread([r['trl_ppl'] - r['cached_equal_wall_ppl'] for r in equal])}."
        + (
            f" The other {len(rows) - len(equal)} raced {loss} second, after another loss: "
            "a race's equal-wall run is its first loss's."
            if len(equal) < len(rows)
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="bench/llm.py's llm.json files")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="llm_seeds", help="the results' file name, no suffix")
    parser.add_argument(
        "--loss", default=None, help="this loss of each race (default: each race's first)"
    )
    parser.add_argument(
        "--note", default=None, help="how the races ran (which shared the cores), for the table"
    )
    args = parser.parse_args(argv)
    rows = sorted(
        (row(json.loads(path.read_text()), args.loss) for path in args.reports),
        key=lambda r: r["seed"],
    )
    command = "python bench/llm_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if len({r["loss"] for r in rows}) > 1:
        raise SystemExit("bench/llm_seeds.py: the races' first losses differ; one loss a table")
    (args.results / f"{args.name}.json").write_text(
        json.dumps({"command": command, "seeds": rows}, indent=2)
    )
    note = f"\nHow the races ran: {args.note}\n" if args.note else ""
    (args.results / f"{args.name}.md").write_text(markdown(rows, command) + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
