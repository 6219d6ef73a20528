"""Which sparse teacher signal a language-model cache should hold: the decision table of
issue 31, on bench/llm.py's SmolLM2 pair (the same teacher, pruned student, Shakespeare windows,
optimiser and steps).

For each signal: bytes per position of the cache, its build time, the student's training
tokens/s and its held-out perplexity after the same steps, against the live (dense) teacher:

  live          the teacher in the loop, dense logits (kdistill's chunked loss)
  topk<k>       its k most probable tokens + the tail mass (the exact bucket form of the loss)
  sampled<K>    K tokens drawn from the teacher, with their importance weights (random-sampling
                KD, Anshumann et al., ACL 2025, arXiv:2503.16870; kdistill.losses.sparse)
  sampled<K>-t<τ>  the same drawn from the flatter softmax(t / τ)

A seed s reorders the training windows (s = 0: bench/llm.py's order) and, for a sampled cache,
seeds its draws: the live and top-k students differ only by the order, a sampled one also by
its draws. Every way runs in a fresh process (bench/llm.py --way); the caches are built here,
one after the other, each timed around ``build_cache`` (the teacher forward included, its
loading not).

    python bench/llm_sparse.py --scratch  # the table (~45 minutes on one thread)
    python bench/llm_sparse.py --tiny     # a tiny pair, ~2 minutes (no results unless --results)

Writes bench/results/llm_sparse.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llm
import torch
from llm_pair import build_teacher_cache, load_model

DEFAULT_RUNS = {
    "forward_kl": "live:3,topk16:1,topk64:3,topk256:1,sampled8:3,sampled16:3,sampled32:3",
    "jsd": "live:1,topk64:1",
}
SIGNAL = re.compile(r"^(live|topk(\d+)|sampled(\d+)(?:-t([\d.]+))?)$")


def parse_runs(text: str) -> dict[str, int]:
    """``name:seeds,...`` into ``{name: seeds}``, each name a signal this bench knows."""
    runs = {}
    for item in filter(None, text.split(",")):
        name, _, seeds = item.partition(":")
        if not SIGNAL.match(name):
            raise SystemExit(
                f"bench/llm_sparse.py: unknown signal {name!r} (live, topk<k>, sampled<K>[-t<τ>])"
            )
        runs[name] = int(seeds or 1)
    return runs


def signal_of_name(name: str, seed: int) -> dict | None:
    """The cache signal a name stands for (``None``: live); a sampled one drawn with ``seed``."""
    from kdistill.teachers.signals import signal_of

    _, k, samples, proposal = SIGNAL.match(name).groups()
    if k:
        return signal_of(int(k))
    if samples:
        tempered = {"proposal_temperature": float(proposal)} if proposal else {}
        return signal_of(samples=int(samples), seed=seed, **tempered)
    return None


def cache_name(name: str, seed: int) -> str:
    # top-k caches have no draws: one for every seed
    return f"cache-{name}" if name.startswith("topk") else f"cache-{name}-s{seed}"


def build_caches(args, runs: dict[str, dict[str, int]], prepared: dict) -> dict[str, dict]:
    """Every cache the runs read, built once, timed and measured."""
    wanted = {}
    for per_signal in runs.values():
        for name, seeds in per_signal.items():
            for seed in range(seeds):
                signal = signal_of_name(name, seed)
                if signal is not None:
                    wanted.setdefault(cache_name(name, seed), signal)
    teacher = load_model(prepared["teacher_dir"], args.device)
    built = {}
    for folder, signal in wanted.items():
        built[folder] = build_teacher_cache(teacher, args, folder, signal)
        print(f"  built {folder:24s} {json.dumps(built[folder])}", file=sys.stderr)
    return built


def summarise(records: list[dict], built: dict, prepared: dict, args) -> dict:
    vocab = prepared["vocab_size"]
    dense_bytes = vocab * 4  # a float32 dense cache, the dtype these caches are built in
    table = {}
    for record in records:
        table.setdefault(record["loss"], {}).setdefault(record["signal"], []).append(record)
    rows = {}
    for loss, signals in table.items():
        live = (
            statistics.mean(r["ppl"] for r in signals.get("live", []))
            if "live" in signals
            else None
        )
        for name, rs in signals.items():
            ppl = [r["ppl"] for r in rs]
            caches = [built[c] for c in {cache_name(name, r["seed"]) for r in rs} if c in built]
            row = {
                "seeds": [r["seed"] for r in rs],
                "ppl": ppl,
                "ppl_mean": statistics.mean(ppl),
                "ppl_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in rs),
                "bytes_per_position": statistics.mean(c["cache_bytes_per_position"] for c in caches)
                if caches
                else dense_bytes,
                "build_s": statistics.mean(c["cache_build_s"] for c in caches) if caches else None,
            }
            row["bytes_vs_dense"] = row["bytes_per_position"] / dense_bytes
            row["ppl_vs_live"] = row["ppl_mean"] / live if live else None
            rows.setdefault(loss, {})[name] = row
    return {
        "by_loss": rows,
        "decision": decide(rows.get("forward_kl", {})),
        "prepared": prepared,
        "caches": built,
        "dense_bytes_per_position": dense_bytes,
        "settings": {k: getattr(args, k) for k in ("mode", "device", "threads", *llm.SETTINGS)},
        "runs": {loss: dict(r) for loss, r in args.runs.items()},
        "machine": llm_machine(),
    }


BYTES_TARGET, PPL_TARGET = 0.05, 1.02  # issue 31: ≤ 5 % of dense bytes, within 2 % of live


def decide(rows: dict) -> dict:
    """The default signal: the smallest cache whose forward-KL student is within 2 % of the live
    one's held-out perplexity (mean over its seeds); if none is, the best student's."""
    caches = {name: row for name, row in rows.items() if name != "live"}
    if not caches or "live" not in rows:
        return {"signal": None, "why": "no cached and live runs to compare"}
    good = {
        name: row
        for name, row in caches.items()
        if row["bytes_vs_dense"] <= BYTES_TARGET and row["ppl_vs_live"] <= PPL_TARGET
    }
    if good:
        name = min(good, key=lambda n: (good[n]["bytes_per_position"], good[n]["ppl_mean"]))
        why = (
            f"the smallest cache ({good[name]['bytes_per_position']:.0f} bytes per position, "
            f"{100 * good[name]['bytes_vs_dense']:.2f} % of dense) whose forward-KL student is "
            f"within 2 % of the live teacher's (ppl {good[name]['ppl_vs_live']:.3f}× live)"
        )
    else:
        name = min(caches, key=lambda n: caches[n]["ppl_mean"])
        why = (
            f"no cache reaches 2 % of the live student; this one comes closest "
            f"({caches[name]['ppl_vs_live']:.3f}× live at {100 * caches[name]['bytes_vs_dense']:.2f} % of dense)"
        )
    return {"signal": name, "meets_target": bool(good), "why": why}


def llm_machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def markdown(report: dict, command: str) -> str:
    settings, prepared = report["settings"], report["prepared"]
    lines = [
        "# Sparse teacher signals for a language-model cache: the decision table",
        "",
        f"Command: `{command}`",
        "",
        (
            f"Machine: {report['machine']}, {settings['threads']} thread(s), device {settings['device']}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}. bench/llm.py's pair and way: {settings['steps']} steps × batch "
            f"{settings['batch']} × {settings['seq_len']} tokens, AdamW lr {settings['lr']} (constant, clip 1), float32, "
            f"the divergence alone (no CE). Teacher ppl {prepared['teacher_ppl']:.2f}, pruned student "
            f"{prepared['pruned_ppl']:.2f}, CE-only scratch student {report.get('scratch_ppl', float('nan')):.2f}. "
            f"Held-out: {prepared['heldout_tokens']} tokens of plays never trained on. Seeds: the order of the "
            "training windows (0: bench/llm.py's) and a sampled cache's draws."
        ),
        "",
        f"Bytes per position: the cache's arrays over its positions (float32 values, int32 ids); "
        f"a dense float32 cache holds {report['dense_bytes_per_position']:,} (V = {prepared['vocab_size']:,}).",
        "",
        "| loss | signal | bytes / position | vs dense | build s | tokens/s | tokens/CPU-s | held-out ppl (mean ± sd) | vs live | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loss, rows in report["by_loss"].items():
        for name, row in rows.items():
            build = "—" if row["build_s"] is None else f"{row['build_s']:.1f}"
            versus = "—" if row["ppl_vs_live"] is None else f"{row['ppl_vs_live']:.3f}"
            size = "(live)" if name == "live" else f"{row['bytes_per_position']:.0f}"
            share = "—" if name == "live" else f"{100 * row['bytes_vs_dense']:.2f} %"
            lines.append(
                f"| {loss} | {name} | {size} | {share} | {build} | {row['tokens_per_s']:.1f} | "
                f"{row['tokens_per_cpu_s']:.1f} | {row['ppl_mean']:.2f} ± {row['ppl_std']:.2f} | {versus} | "
                f"{len(row['seeds'])} |"
            )
    decision = report["decision"]
    lines += [
        "",
        f"**Default: {decision['signal']}**: {decision['why']} (rule: the smallest cache within 2 % of live, else the closest).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny LlamaConfig pair; no results")
    parser.add_argument("--quick", action="store_true", help="bench/llm.py's quick scale")
    for loss, runs in DEFAULT_RUNS.items():
        parser.add_argument(
            f"--{loss.replace('_', '-')}",
            default=runs,
            help=f"signal:seeds,... for {loss} ('' skips it)",
        )
    parser.add_argument("--scratch", action="store_true", help="also the CE-only scratch student")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ours, rest = parser.parse_known_args(argv)
    mode = ["--tiny"] if ours.tiny else ["--quick"] if ours.quick else []
    # bench/llm.py's settings; no cache at prepare time (built here) and no curve
    args = llm.parse_args(
        [
            *mode,
            *rest,
            "--device",
            ours.device,
            "--topk",
            "0",
            "--samples",
            "0",
            "--curve-every",
            "0",
        ]
    )
    args.runs = {loss: parse_runs(getattr(ours, loss)) for loss in DEFAULT_RUNS}
    args.runs = {loss: runs for loss, runs in args.runs.items() if runs}
    args.scratch, args.workdir, args.results = ours.scratch, ours.workdir, ours.results
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-llm-sparse-") as scratch:
        args.workdir = args.workdir or scratch
        prepared = llm.spawn(args, "prepare")
        prepared["vocab_size"] = load_model(Path(args.workdir) / "student", "cpu").config.vocab_size
        built = build_caches(args, args.runs, prepared)
        records = []
        for loss, runs in args.runs.items():
            for name, seeds in runs.items():
                for seed in range(seeds):
                    args.order_seed = seed
                    args.cache_name = cache_name(name, seed)
                    way = "kdistill_live" if name == "live" else "kdistill_cached"
                    records.append({**llm.spawn(args, way, loss), "signal": name, "seed": seed})
        scratch_record = llm.spawn(args, "plain", "ce") if args.scratch else None
    report = summarise(records, built, prepared, args)
    if scratch_record:
        report["scratch_ppl"] = scratch_record["ppl"]
    report["total_s"] = time.perf_counter() - started
    results = Path(args.results) if args.results else (llm.RESULTS if args.mode != "tiny" else None)
    if results is not None:
        command = "python bench/llm_sparse.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        (results / "llm_sparse.json").write_text(json.dumps(report, indent=2, default=str))
        (results / "llm_sparse.md").write_text(markdown(report, command.strip()))
    print(
        json.dumps(
            {
                loss: {n: round(r["ppl_mean"], 3) for n, r in rows.items()}
                for loss, rows in report["by_loss"].items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
