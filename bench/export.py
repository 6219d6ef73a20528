"""Deployment numbers of a recipe's run: ONNX parity (fp32 and int8), and latency, throughput and
teacher/student latency ratios in PyTorch and ONNX Runtime at batch 1 and 256, at each thread count.

    python bench/export.py                         # built-in MNIST recipe: run it, then export
    python bench/export.py --run-dir runs/mnist_kd # an existing run (its export/ is replaced)
    python bench/export.py configs/x.yaml --threads 1 4 -- train.epochs=10

    python bench/export.py --run-dir runs/smollm2_shakespeare --threads 2 --rounds 1 \
        --name export_smollm2                      # a language model (perplexity)

Writes bench/results/<--name, default export>.md and .json (the latest run) with the command
that made them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdistill.deploy.run_export import export_run
from kdistill.run.config import load_config
from kdistill.run.pipeline import run

RESULTS = Path(__file__).resolve().parent / "results"


def fastest(rounds: list[dict]) -> dict:
    """The first round's results with each latency replaced by its minimum over the rounds: on
    shared cores other processes only ever add time, so the fastest median is the least
    disturbed one. Throughput and ratios are recomputed from those latencies."""
    best = copy.deepcopy(rounds[0])
    for model, runtimes in best["latency_ms"].items():
        for runtime, ms in runtimes.items():
            for batch in ms:
                ms[batch] = min(r["latency_ms"][model][runtime][batch] for r in rounds)
            large = best.get("batches", [1, 256])[-1]
            best["throughput"][model][runtime] = 1000 * large / ms[f"batch_{large}"]
    for runtime, ratio in best["latency_ratio"].items():
        for batch in ratio:
            ratio[batch] = (
                best["latency_ms"]["teacher"][runtime][batch]
                / best["latency_ms"]["student"][runtime][batch]
            )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--run-dir", help="export this finished run instead of running the recipe")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument(
        "--repeats", type=int, default=50, help="timing effort per latency measurement (30: 0.2 s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="export and time this many times; keep each fastest median",
    )
    parser.add_argument(
        "--name", default="export", help="results file name: bench/results/<name>.md and .json"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the run")
    args = parser.parse_args()
    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():
        args.overrides, args.recipe = (
            [args.recipe, *args.overrides],
            None,
        )  # overrides of the built-in recipe

    with tempfile.TemporaryDirectory() as out:
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            recipe = load_config(
                args.recipe, [*args.overrides, f"output.dir={out}", "output.progress=false"]
            )
            started = time.perf_counter()
            run(recipe, echo=lambda *_: None)
            print(f"ran {recipe.name} in {time.perf_counter() - started:.0f} s", flush=True)
            run_dir = Path(out) / recipe.name
        summary = json.loads((run_dir / "summary.json").read_text())
        results = {}
        for threads in dict.fromkeys(args.threads):
            torch.set_num_threads(threads)
            rounds = []
            for round_ in range(args.rounds):
                print(f"--- {threads} thread(s), round {round_ + 1}/{args.rounds}", flush=True)
                rounds.append(export_run(run_dir, overwrite=True, repeats=args.repeats, echo=print))
            results[threads] = fastest(rounds)

    command = "python bench/export.py " + " ".join(sys.argv[1:])
    first = next(iter(results.values()))
    checks = first["checks"]
    int8 = checks.get("student int8")
    headline = summary["task"]["metrics"][0]
    percent = headline in summary["task"].get("percent", [])

    def score(value: float) -> str:
        return f"{100 * value:.2f}%" if percent else f"{value:.2f}"

    large = first.get("batches", [1, 256])[-1]
    lines = [
        f"# {summary['name']}: deployment (ONNX)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} "
        f"CPU(s) (shared), torch {torch.__version__}, onnxruntime "
        f"{first['versions']['onnxruntime']}, "
        f"{first['exporter']} exporter, opset {first['opset']}",
        "",
        f"Models: teacher {summary['teacher']['model']} "
        f"({summary['teacher']['params']:,} parameters, test {headline} "
        f"{score(summary['teacher'][headline])}), distilled student "
        f"{summary['student']['model']} ({summary['student']['params']:,} parameters, "
        f"{score(summary['student'][headline])}).",
        "",
        f"Parity on {first['parity_samples']} test samples and "
        "batch 1: student fp32 max |ONNX Runtime − PyTorch| = "
        f"{checks['student fp32']['max_abs_diff']:.2e} (tolerance "
        f"{checks['student fp32']['tolerance']:g}); teacher fp32 "
        f"{checks['teacher fp32']['max_abs_diff']:.2e}.",
    ]
    if int8:
        unit = {"points": " points", "percent": " %"}.get(int8.get("drop_unit", "points"), "")
        scale = 1 if not unit else 100
        kept = int8.get("kept_float32") or []
        lines.append(
            "int8 student (dynamic quantisation, per-channel weights): max |int8 − fp32| = "
            f"{int8['max_abs_diff']:.2e}, top-1 agreement "
            f"{100 * int8['top1_agreement_with_fp32']:.1f}%, test {headline} "
            f"{score(int8['reference'])} → {score(int8['value'])} (drop "
            f"{scale * int8['drop']:.2f}{unit}, tolerance {scale * int8['tolerance']:g}{unit}); "
            + (
                f"kept in float32 (chosen on the {int8['selection']['split']} split): "
                f"{', '.join(kept)}; "
                if kept
                else ""
            )
            + f"size {first['files']['student_int8']['bytes']:,} vs "
            f"{first['files']['student']['bytes']:,} bytes."
        )
    lines += [
        "",
        "| threads | model | runtime | latency b=1 (ms) | "
        f"latency b={large} (ms) | throughput b={large} (samples/s) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for threads, result in results.items():
        for model, runtimes in result["latency_ms"].items():
            for runtime, ms in runtimes.items():
                lines.append(
                    f"| {threads} | {model} | {runtime} | "
                    f"{ms['batch_1']:.3f} | {ms[f'batch_{large}']:.2f} | "
                    f"{result['throughput'][model][runtime]:,.0f} |"
                )
    lines += [
        "",
        f"| threads | runtime | teacher/student latency b=1 | b={large} |",
        "|---:|---|---:|---:|",
    ]
    for threads, result in results.items():
        for runtime, ratio in result["latency_ratio"].items():
            lines.append(
                f"| {threads} | {runtime} | {ratio['batch_1']:.1f}× "
                f"| {ratio[f'batch_{large}']:.1f}× |"
            )
    effort = 0.2 * args.repeats / 30
    lines += [
        "",
        "Latency: median of torch.utils.benchmark's blocked autorange "
        f"({effort:.2f} s of timed blocks per measurement), "
        f"the fastest of {args.rounds} rounds; the machine's cores are shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the "
        "end), so treat differences under ~20% as noise.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps(
            {
                "command": command,
                "summary": summary,
                "export": {str(k): v for k, v in results.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
