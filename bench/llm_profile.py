"""Where a step of the language-model race goes: kdistill's live and cached ways of
``bench/llm.py`` under ``torch.profiler``, their CPU time split into matrix products, the fused
AdamW step and everything else (the loss's elementwise passes, norms, activations, copies).

    python bench/llm.py --quick --workdir /tmp/race     # prepares the pair, data and cache there
    python bench/llm_profile.py --workdir /tmp/race     # ~4 minutes on one thread

Writes bench/results/llm_profile.md. Shares of self CPU time over the whole ``kdistill.fit``
call (the profiler's own overhead is in the wall time, not the shares).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from llm import RESULTS, run_kdistill
from torch.profiler import ProfilerActivity, profile

MATMUL = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}
OPTIMIZER = {"aten::_fused_adamw_", "aten::_fused_adam_"}
ELEMENTWISE_LOSS = {
    "aten::exp",
    "aten::exp_",
    "aten::sub",
    "aten::sub_",
    "aten::amax",
    "aten::div_",
    "aten::sum",
    "aten::logsumexp",
    "aten::mul_",
    "aten::dot",
    "aten::scatter_",
    "aten::gather",
}


def shares(events) -> tuple[dict[str, float], list[tuple[str, float]]]:
    groups, ops, total = {}, {}, 0.0
    for event in events:
        if event.self_cpu_time_total <= 0:
            continue
        group = (
            "matrix products"
            if event.key in MATMUL
            else "AdamW (fused)"
            if event.key in OPTIMIZER
            else "softmax-type passes (exp, sub, sum, ...)"
            if event.key in ELEMENTWISE_LOSS
            else "other"
        )
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total
        ops[event.key] = ops.get(event.key, 0.0) + event.self_cpu_time_total
        total += event.self_cpu_time_total
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    return {k: v / total for k, v in groups.items()}, [(k, v / total) for k, v in top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a folder bench/llm.py --workdir prepared")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = json.loads((RESULTS / "llm.json").read_text())["settings"]
    lines = [
        "# Where a race step goes (kdistill, forward KL)",
        "",
        "Command: `python bench/llm_profile.py --workdir "
        f"DIR --threads {args.threads}`; settings of bench/results/llm.json ({settings['steps']} "
        f"steps × {settings['batch']} × "
        f"{settings['seq_len']} tokens, chunks of {settings['chunk_size']}, "
        f"top-{settings['topk']} cache). Shares of self CPU time.",
        "",
    ]
    for way in ("kdistill_cached", "kdistill_live"):
        run = argparse.Namespace(**settings, workdir=args.workdir, loss="forward_kl", way=way)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            run_kdistill(run, cached=way == "kdistill_cached")
            wall = time.perf_counter() - started
        groups, top = shares(prof.key_averages())
        lines += [
            f"## {way} ({wall:.0f} s under the profiler)",
            "",
            "| part | share |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:.0%} |" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]
        lines += ["", "Largest operators: " + ", ".join(f"{k} {v:.0%}" for k, v in top), ""]
        print("\n".join(lines[-(len(groups) + 6) :]), flush=True)
    (RESULTS / "llm_profile.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
