"""bench/llm.py's report: the medians over repeats, the ratios against TRL, the time to TRL's
quality, and the Markdown table."""

from __future__ import annotations

import os
import platform

import torch
from llm_curve import time_to_quality

# --precision: every way's training and the cache build (held-out perplexity: float32 always)
PRECISION = {
    "fp32": "float32",
    "bf16": "bf16 autocast for every way and the cache build (TRL: bf16=True), perplexity "
    "scored in float32",
}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarise(records: list[dict], prepared: dict, args, settings: tuple) -> dict:
    """Per way and loss: the median tokens/s and perplexity over repeats, the largest peak."""
    table = {}
    for record in records:
        entry = table.setdefault(record["loss"], {}).setdefault(record["way"], [])
        entry.append(record)
    by_loss = {
        loss: {
            way: {
                "tokens_per_s": _median([r["tokens_per_s"] for r in rs]),
                "tokens_per_cpu_s": _median([r["tokens_per_cpu_s"] for r in rs]),
                "peak_mb": max(r["peak_mb"] for r in rs),
                "ppl": _median([r["ppl"] for r in rs]),
                "final_train_loss": _median([r["final_train_loss"] for r in rs]),
                "train_s": _median([r["train_s"] for r in rs]),
                "curve": rs[0].get("curve"),  # the first repeat's
                "runs": len(rs),
            }
            for way, rs in ways.items()
        }
        for loss, ways in table.items()
    }
    main = by_loss[args.losses[0]]
    plain = by_loss["ce"]["plain"]
    summary = {
        "kdistill_live_tokens_per_s": main["kdistill_live"]["tokens_per_s"],
        "kdistill_cached_tokens_per_s": main["kdistill_cached"]["tokens_per_s"],
        "trl_tokens_per_s": main["trl"]["tokens_per_s"],
        "plain_tokens_per_s": plain["tokens_per_s"],
        "kdistill_live_peak_mb": main["kdistill_live"]["peak_mb"],
        "kdistill_cached_peak_mb": main["kdistill_cached"]["peak_mb"],
        "trl_peak_mb": main["trl"]["peak_mb"],
        "teacher_ppl": prepared["teacher_ppl"],
        "pruned_ppl": prepared["pruned_ppl"],
        "scratch_ppl": plain["ppl"],
        "student_ppl": main["kdistill_live"]["ppl"],
        "trl_student_ppl": main["trl"]["ppl"],
    }
    ratios = {
        "kdistill_live_vs_trl_tokens_per_s": summary["kdistill_live_tokens_per_s"]
        / summary["trl_tokens_per_s"],
        "kdistill_cached_vs_trl_tokens_per_s": summary["kdistill_cached_tokens_per_s"]
        / summary["trl_tokens_per_s"],
        "kdistill_cached_vs_trl_peak_mb": summary["kdistill_cached_peak_mb"]
        / summary["trl_peak_mb"],
        "kdistill_live_vs_trl_tokens_per_cpu_s": main["kdistill_live"]["tokens_per_cpu_s"]
        / main["trl"]["tokens_per_cpu_s"],
        "kdistill_cached_vs_trl_tokens_per_cpu_s": main["kdistill_cached"]["tokens_per_cpu_s"]
        / main["trl"]["tokens_per_cpu_s"],
    }
    return {
        **summary,
        **race(main, prepared, by_loss.get("ce", {})),
        "race_by_loss": race_by_loss(by_loss, prepared),
        "ratios": ratios,
        "main_loss": args.losses[0],
        "by_loss": by_loss,
        "prepared": prepared,
        "settings": {k: getattr(args, k) for k in ("mode", "device", "threads", *settings)},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}",
    }


def race(ways: dict, prepared: dict, plain: dict) -> dict:
    """The race to quality (one loss's ``ways``): each way's wall time to TRL's end-of-budget
    held-out perplexity, the cache build counted in the cached way's; the ratio for the cached
    way against TRL's whole training time (``None``: not reached within the budget)."""
    target, trl_s = ways["trl"]["ppl"], ways["trl"]["train_s"]
    ways = {**ways, **plain}
    offsets = {"kdistill_cached": prepared.get("cache_build_s", 0.0)}
    reach = {
        way: time_to_quality(row["curve"] or [], target, offsets.get(way, 0.0))
        for way, row in ways.items()
    }
    cached = reach.get("kdistill_cached")
    # The same race with the cache already on disk (a second run, seed or epoch reads it free).
    reused = time_to_quality(ways["kdistill_cached"]["curve"] or [], target)
    return {
        "time_to_trl_quality_ratio_cache_reused": None if reused is None else reused / trl_s,
        "live_student_ppl": ways["kdistill_live"]["ppl"],
        "sparse_student_ppl": ways["kdistill_cached"]["ppl"],
        "time_to_trl_quality_s": reach,
        "time_to_trl_quality_ratio": None if cached is None else cached / trl_s,
    }


def race_by_loss(by_loss: dict, prepared: dict) -> dict:
    """``race`` for every loss the three distilling ways ran (the JSON's top-level keys hold the
    first loss's alone)."""
    ways = ("kdistill_live", "kdistill_cached", "trl")
    return {
        loss: race(rows, prepared, by_loss.get("ce", {}))
        for loss, rows in by_loss.items()
        if all(way in rows for way in ways)
    }


def race_lines(report: dict) -> list[str]:
    ways = {**report["by_loss"][report["main_loss"]], **report["by_loss"].get("ce", {})}
    build = report["prepared"].get("cache_build_s", 0.0)
    lines = [
        "",
        f"## Race to quality ({report['main_loss']})",
        "",
        "Held-out perplexity against wall-clock seconds of training (evaluations excluded); the "
        f"cached way's clock starts at its cache's build time ({build:.1f} s). Target: TRL's "
        f"end-of-budget perplexity {ways['trl']['ppl']:.2f}.",
        "",
        "| way | wall s (build incl.) | held-out ppl | reaches TRL's ppl at (s) | curve (s: ppl) |",
        "|---|---:|---:|---:|---|",
    ]
    for way, row in ways.items():
        offset = build if way == "kdistill_cached" else 0.0
        reach = report["time_to_trl_quality_s"].get(way)
        curve = ", ".join(f"{offset + t:.0f}: {p:.0f}" for _, t, p in row["curve"] or [])
        lines.append(
            f"| {way} | {offset + row['train_s']:.1f} | {row['ppl']:.2f} | "
            f"{'not reached' if reach is None else f'{reach:.1f}'} | {curve} |"
        )
    ratio = report["time_to_trl_quality_ratio"]
    if report.get("plot"):
        lines += ["", f"![held-out perplexity against wall-clock seconds]({report['plot']})"]
    reused = report.get("time_to_trl_quality_ratio_cache_reused")
    equal = report.get("equal_wall")
    if equal:
        lines += [
            "",
            f"At TRL's wall time ({equal['trl_wall_s']:.1f} s): the cached way, build included, "
            f"fits {equal['steps']} steps ({equal['wall_s']:.1f} s; the steps past "
            f"{report['settings']['steps']} read the first windows again) and is at held-out "
            f"perplexity {equal['ppl']:.2f}, against TRL's {equal['trl_ppl']:.2f}.",
        ]
    lines += [
        "",
        "time_to_trl_quality_ratio (cached way, build included, over TRL's training time): "
        + ("not reached within the budget" if ratio is None else f"{ratio:.2f}")
        + " (target ≤ 0.5); with the cache already built (a second run, seed or epoch): "
        + ("not reached" if reused is None else f"{reused:.2f}")
        + ".",
    ]
    for loss, other in report.get("race_by_loss", {}).items():
        if loss == report["main_loss"]:
            continue
        ratio, reused = (
            other["time_to_trl_quality_ratio"],
            other["time_to_trl_quality_ratio_cache_reused"],
        )
        lines += [
            "",
            f"{loss}: the cached way, build included, reaches TRL's end-of-budget perplexity "
            f"{report['by_loss'][loss]['trl']['ppl']:.2f} in "
            + ("not reached" if ratio is None else f"{ratio:.2f}")
            + "× TRL's training time ("
            + ("not reached" if reused is None else f"{reused:.2f}")
            + "× with the cache already built).",
        ]
    return lines


def signal_name(settings: dict) -> str:
    if settings.get("cache") == "hidden":
        return "hidden-state (final hidden states + head)"
    samples, k = settings.get("samples"), settings.get("topk")
    if samples:
        return f"top-{k} + {samples} sampled" if k else f"sampled-{samples}"
    return f"top-{k}"


def markdown(report: dict, command: str) -> str:
    settings, prepared = report["settings"], report["prepared"]
    names = {
        "kdistill_live": "(a) kdistill, live teacher",
        "kdistill_cached": f"(b) kdistill, {signal_name(settings)} cache",
        "trl": "(c) TRL GKDTrainer (lmbda=0)",
        "plain": "(d) plain loop, cross-entropy (scratch)",
    }
    lines = [
        "# Language-model race: SmolLM2-135M → pruned student",
        "",
        f"Command: `{command}`",
        "",
        (
            f"Machine: {report['machine']}, {settings['threads']} thread(s), device "
            f"{settings['device']}. "
            f"{settings['steps']} steps × batch {settings['batch']} × {settings['seq_len']} "
            f"tokens, AdamW lr {settings['lr']} "
            f"(constant, clip 1), {PRECISION[settings.get('precision', 'fp32')]}. "
            f"Student: layers {prepared['kept_layers']} of the "
            "teacher "
            f"({prepared['student_params'] / 1e6:.1f}M of {prepared['teacher_params'] / 1e6:.1f}M "
            "parameters). "
            f"Held-out: {prepared['heldout_tokens']} tokens of plays never trained on."
        ),
        "",
        (
            f"Perplexity: teacher {report['teacher_ppl']:.2f}, pruned before training "
            f"{report['pruned_ppl']:.2f}, "
            f"scratch (d) {report['scratch_ppl']:.2f}."
        ),
        "",
        "| loss | way | tokens/s | tokens/CPU-s | peak RSS (MiB) | held-out ppl | last train "
        "loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for loss, ways in report["by_loss"].items():
        for way, row in ways.items():
            lines.append(
                f"| {loss} | {names[way]} | {row['tokens_per_s']:.1f} | "
                f"{row['tokens_per_cpu_s']:.1f} | {row['peak_mb']:.0f} "
                f"| {row['ppl']:.2f} | {row['final_train_loss']:.4f} |"
            )
    ratios = report["ratios"]
    lines += [
        "",
        (
            f"Against TRL ({report['main_loss']}): kdistill live "
            f"{ratios['kdistill_live_vs_trl_tokens_per_s']:.2f}× its "
            "tokens/s (target ≥ 1.0), cached "
            f"{ratios['kdistill_cached_vs_trl_tokens_per_s']:.2f}× (target ≥ 1.5), "
            f"cached peak memory {ratios['kdistill_cached_vs_trl_peak_mb']:.2f}× (target ≤ 0.6). "
            "Per CPU second: live "
            f"{ratios['kdistill_live_vs_trl_tokens_per_cpu_s']:.2f}×, cached "
            f"{ratios['kdistill_cached_vs_trl_tokens_per_cpu_s']:.2f}×."
        ),
        "",
        (
            f"The {signal_name(settings)} cache ({prepared['cache_bytes_per_position']:.0f} bytes "
            "per position) "
            f"was built in {prepared['cache_build_s']:.1f} s"
            + (
                f" (JSD's top-{settings['topk']} cache in {prepared['topk_cache_build_s']:.1f} s)"
                if "topk_cache_build_s" in prepared
                else ""
            )
            + ", outside the cached way's "
            "time and memory (that process never loads the teacher)."
        ),
        "",
        (
            "tokens/s: counted positions over the wall time of the training call only (model "
            "loading, cache build and "
            "evaluation excluded); tokens/CPU-s: over that call's CPU time (user + system), "
            "steadier on a shared machine; peak RSS: ru_maxrss of the way's own fresh process "
            "right after training (interpreter, "
            "libraries and models included); medians over repeats, ABBA order."
        ),
    ]
    chunk = settings.get("chunk_size") or 0
    lines += [
        "",
        (
            f"kdistill's loss: over chunks of {chunk} positions from the student's final hidden "
            "states and head "
            "(distill.params.chunk_size; no (B, L, V) logits are made)"
            if chunk
            else "kdistill's loss: over whole (B, L, V) logits (--chunk-size 0)"
        )
        + "; TRL's: whole logits.",
    ]
    return "\n".join(lines + race_lines(report)) + "\n"


def plot(report: dict, path) -> bool:
    """Held-out perplexity against wall-clock seconds, one line per way (the race to quality),
    as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ways = {**report["by_loss"][report["main_loss"]], **report["by_loss"].get("ce", {})}
    build = report["prepared"].get("cache_build_s", 0.0)
    figure, axes = plt.subplots(figsize=(6, 4))
    for way, row in ways.items():
        offset = build if way == "kdistill_cached" else 0.0
        points = row["curve"] or []
        axes.plot([offset + t for _, t, _ in points], [p for _, _, p in points], "o-", label=way)
    equal = report.get("equal_wall") or {}
    if equal.get("curve") and equal["steps"] > report["settings"]["steps"]:
        points = equal["curve"]
        axes.plot(
            [build + t for _, t, _ in points],
            [p for _, _, p in points],
            "--",
            color="grey",
            label=f"kdistill_cached, {points[-1][0]} steps (to TRL's wall time)",
        )
    axes.axhline(ways["trl"]["ppl"], color="grey", linestyle=":", label="TRL's final ppl")
    axes.set(xlabel="wall-clock s (cache build included)", ylabel="held-out perplexity")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
