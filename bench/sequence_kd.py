"""Sequence-level KD on the SmolLM2 recipe: token-level KD, the teacher's sequences alone, and the
two mixed (Kim & Rush 2016, arXiv:1606.07947), each a `kdistill run` of
configs/smollm2_shakespeare.yaml with its scratch student (same pruned start, data and steps), at
the recipe's one-epoch, live-teacher setting (sequence-level KD needs the live teacher, which
writes the sequences; ``LIVE``).

Ways (distill.params.sequence_kd: the teacher's continuations of 32-token prompts from the
training windows to whole 129-token windows, made once per setting and kept under
<runs>/.cache):
  token           the recipe as it is: (1 − α)·CE + α·forward KL on the data, α = 0.5
  sampled_alone   CE on the teacher's sampled sequences only (fraction 1, temperature 1, α = 0):
                  sequence-level KD alone
  sampled_mixed   half of each batch the teacher's sampled sequences, token KD on everything
                  (fraction 0.5, temperature 1, α = 0.5): sequence- and token-level KD together
  greedy_mixed    the same with greedy sequences (temperature 0, Kim & Rush's beam of one)

    python bench/sequence_kd.py                    # runs what runs/bench_seqkd lacks
    python bench/sequence_kd.py --ways greedy_mixed   # one way

Writes bench/results/sequence_kd.md and .json: per way the teacher's, the scratch student's and
the distilled student's test perplexity, the share of the teacher–scratch gap recovered (in
perplexity, as the issue counts it, and in log perplexity, i.e. nats per token) and the run's
wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RECIPE = "configs/smollm2_shakespeare.yaml"
KD = "loss: forward_kl, chunk_size: 256"
LIVE = ["teacher.cache=false", "train.epochs=1"]
WAYS = {
    "sampled_mixed": [
        f"distill.params={{{KD}, sequence_kd: {{fraction: 0.5, sequences: 192, prompt: 32, "
        "temperature: 1.0}}",
        "distill.alpha=0.5",
    ],
    "sampled_alone": [
        f"distill.params={{{KD}, sequence_kd: {{fraction: 1.0, sequences: 384, prompt: 32, "
        "temperature: 1.0}}",
        "distill.alpha=0.0",
    ],
    "greedy_mixed": [
        f"distill.params={{{KD}, sequence_kd: {{fraction: 0.5, sequences: 192, prompt: 32}}}}",
        "distill.alpha=0.5",
    ],
    "token": [],
}


def run(name: str, settings: list[str], runs: Path) -> dict:
    """The run's summary.json, from its run directory, running it first if it is not there."""
    summary = runs / name / "summary.json"
    if not summary.is_file():
        command = [
            str(Path(sys.executable).parent / "kdistill"),
            "run",
            RECIPE,
            f"name={name}",
            f"output.dir={runs}",
            *LIVE,
            *settings,
            "--overwrite",
        ]
        print(" ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(summary.read_text())


def study(results: str, title: str, ways: dict[str, list[str]], prefix: str, runs: str) -> None:
    """Run (or read) each way of ``ways``, then write bench/results/<results>.md and .json."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--ways", default=",".join(ways))
    parser.add_argument("--runs", default=runs, help="where the runs are kept")
    args = parser.parse_args()
    rows = {}
    for way in args.ways.split(","):
        summary = run(f"{prefix}{way}", ways[way], ROOT / args.runs)
        teacher, scratch, student = (
            summary[r]["perplexity"] for r in ("teacher", "scratch", "student")
        )
        gap = (math.log(scratch) - math.log(student)) / (math.log(scratch) - math.log(teacher))
        rows[way] = {
            "gap_recovered_ppl": (scratch - student) / (scratch - teacher),
            "settings": ways[way],
            "teacher": teacher,
            "scratch": scratch,
            "student": student,
            "gap_recovered": gap,
            "seconds": summary["seconds"],
        }
    script = Path(sys.argv[0]).name
    result = {
        "command": f"python bench/{script} " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), one thread per run",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "ways": rows,
    }
    lines = [
        f"# {title}",
        "",
        f"Command: `{result['command'].strip()}` ({RECIPE} with `{' '.join(LIVE)}`: the live "
        "teacher; one seed per way, each a `kdistill run` with its own scratch student).",
        "",
        f"Machine: {result['machine']}; {result['date']}.",
        "",
        "| way | settings | teacher ppl | scratch ppl | student ppl | gap recovered (ppl) "
        "| gap recovered (log ppl) | run s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for way, row in rows.items():
        settings = "; ".join(f"`{s}`" for s in row["settings"]) or "token KD on the data"
        lines.append(
            f"| {way} | {settings} | {row['teacher']:.2f} | {row['scratch']:.2f} | "
            f"{row['student']:.2f} | {row['gap_recovered_ppl']:.1%} | {row['gap_recovered']:.1%} "
            f"| {row['seconds']:.0f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{results}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{results}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    study(
        "sequence_kd",
        "Sequence-level KD on the SmolLM2 recipe",
        WAYS,
        prefix="smollm2_seqkd_",
        runs="runs/bench_seqkd",
    )
