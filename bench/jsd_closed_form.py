"""GKD's JSD in the chunked pass: its gradient in closed form (kdistill.losses.closed_form) against
autograd through the generic loss, on one batch at SmolLM2's sizes (B = 4 × L = 128 positions,
V = 49,152, H = 576), the teacher as hidden states and head (LazyLogits: the live teacher's
or a hidden-state cache's form), β = 0.5, chunks of 256 positions, float32, one thread.

Both ways run in this process, alternating A B B A ... over ``--rounds``; each round times
``--repeats`` loss + backward passes of each. Reported: the median over rounds of the per-round
time ratio (closed / generic), and the largest difference of their values and gradients.

    python bench/jsd_closed_form.py     # about a minute

Writes bench/results/jsd_closed_form.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kdistill.losses import chunked, chunked_token_loss, jsd
from kdistill.modeling import LazyLogits

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"batch": 4, "length": 128, "vocab": 49152, "hidden": 576, "chunk": 256}


def passes(way: str, inputs: dict, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Seconds per loss + backward, the value and the gradient of the hidden states."""
    closed_form = chunked.closed_form
    if way == "generic":  # the chunked pass as before: JSD through autograd
        chunked.closed_form = lambda loss, *a: None if loss is jsd else closed_form(loss, *a)
    try:
        hidden, head, teacher = inputs["hidden"], inputs["head"], inputs["teacher"]
        started = time.perf_counter()
        for _ in range(repeats):
            hidden.grad = None
            value = chunked_token_loss(
                jsd, hidden, head, teacher, chunk_size=SIZES["chunk"], beta=0.5
            )
            value.backward()
        return (time.perf_counter() - started) / repeats, value.item(), hidden.grad.clone()
    finally:
        chunked.closed_form = closed_form


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    b, length, vocab, width = (SIZES[k] for k in ("batch", "length", "vocab", "hidden"))
    inputs = {
        "hidden": torch.randn(b, length, width, generator=g).requires_grad_(),
        "head": 0.05 * torch.randn(vocab, width, generator=g),
        "teacher": LazyLogits(
            torch.randn(b, length, width, generator=g),
            0.05 * torch.randn(vocab, width, generator=g),
        ),
    }
    rounds, value_gap, grad_gap = [], 0.0, 0.0
    for r in range(args.rounds):
        order = ("closed", "generic") if r % 2 == 0 else ("generic", "closed")
        seen = {way: passes(way, inputs, args.repeats) for way in order}
        rounds.append({way: seen[way][0] for way in order})
        value_gap = max(value_gap, abs(seen["closed"][1] - seen["generic"][1]))
        grad_gap = max(grad_gap, (seen["closed"][2] - seen["generic"][2]).abs().max().item())
    ratios = [r["closed"] / r["generic"] for r in rounds]
    report = {
        "sizes": SIZES,
        "rounds": rounds,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "max_value_difference": value_gap,
        "max_grad_difference": grad_gap,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    lines = [
        "# GKD's JSD in the chunked pass: closed-form gradient against autograd",
        "",
        "Command: `python bench/jsd_closed_form.py"
        + (f" --rounds {args.rounds}" if args.rounds != 4 else "")
        + "`",
        "",
        f"Machine: {report['machine']}, {report['date']}. One batch of {b} × {length} positions, "
        f"V = {vocab:,}, H = {width}, the teacher as hidden states and head, β = 0.5, chunks of "
        f"{SIZES['chunk']}, float32; loss + backward, {args.repeats} passes a way a round, the "
        "ways alternated A B B A.",
        "",
        "| round | closed form (s) | autograd (s) | ratio |",
        "|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {r['closed']:.2f} | {r['generic']:.2f} | {ratio:.2f} |"
            for i, (r, ratio) in enumerate(zip(rounds, ratios))
        ),
        "",
        f"Median ratio: **{report['ratio_median']:.2f}** (closed form / autograd). Largest "
        f"difference: value {value_gap:.1e}, gradient {grad_gap:.1e}.",
    ]
    results = Path(args.results)
    (results / "jsd_closed_form.json").write_text(json.dumps(report, indent=2))
    (results / "jsd_closed_form.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"ratio_median": report["ratio_median"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
