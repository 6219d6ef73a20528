"""The chunked head's products under bf16 autocast, against the same step at float32
products: one chunked forward-KL step (kdistill.losses.chunked, value and backward) at the
SmolLM2 race's shapes, B = 4 sequences of L = 128 positions, H = 576, V = 49,152, chunks of
128; the student's and the teacher's final hidden states in float32, as HF models give them
under autocast.

  float32 products   LazyLogits made outside autocast (``product=None``): the head's products
                     in float32, as every chunked loss ran them before ``LazyLogits.product``
  bf16 products      LazyLogits made under bf16 autocast (``product=torch.bfloat16``): the
                     logits and the hidden states' gradient in bf16, softmax and the head's
                     gradient in float32

ABBA rounds in one process, one thread; the ratio is the median of the rounds' time ratios
(the host drifts, a round's two ways do not). bf16 products pay off where the CPU has bf16
matrix units (AMX); the report names the CPU's flags.

    python bench/chunked_precision.py           # ~1 minute
    python bench/chunked_precision.py --rounds 2

Writes bench/results/chunked_precision.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from kdistill.losses import forward_kl
from kdistill.losses.chunked import ChunkedTerm, chunked_token_losses
from kdistill.modeling import LazyLogits

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"batch": 4, "length": 128, "hidden": 576, "vocab": 49152, "chunk": 128}
WAYS = {"float32 products": None, "bf16 products": torch.bfloat16}


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(f for f in flags if f.startswith(("amx", "avx512_bf16"))) or "no bf16 units"


def step(inputs: dict, product) -> float:
    """One loss + backward; seconds."""
    student = LazyLogits(inputs["hidden"], inputs["weight"], product=product)
    teacher = LazyLogits(inputs["teacher_hidden"], inputs["teacher_weight"], product=product)
    started = time.perf_counter()
    total, _ = chunked_token_losses(
        student, teacher, None, [ChunkedTerm(forward_kl, 1.0, {})], chunk_size=SIZES["chunk"]
    )
    total.backward()
    seconds = time.perf_counter() - started
    inputs["hidden"].grad = inputs["weight"].grad = None
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="ABBA rounds (each: 4 steps)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    b, length, h, v = (SIZES[k] for k in ("batch", "length", "hidden", "vocab"))
    inputs = {
        "hidden": torch.randn(b, length, h, generator=g).requires_grad_(),
        "weight": (0.05 * torch.randn(v, h, generator=g)).requires_grad_(),
        "teacher_hidden": torch.randn(b, length, h, generator=g),
        "teacher_weight": 0.05 * torch.randn(v, h, generator=g),
    }
    names = list(WAYS)
    for name in names:  # warm-up: allocator, kernels
        step(inputs, WAYS[name])
    times = {name: [] for name in names}
    ratios = []
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        seconds = {}
        for name in order + order[::-1]:  # A B B A
            seconds.setdefault(name, []).append(step(inputs, WAYS[name]))
        for name in names:
            times[name].append(statistics.mean(seconds[name]))
        ratios.append(times["bf16 products"][-1] / times["float32 products"][-1])
    report = {
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "cpu_bf16_units": cpu_flags(),
        "sizes": SIZES,
        "rounds": args.rounds,
        "ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "bf16_over_float32": statistics.median(ratios),
        "ratios": ratios,
    }
    command = "python bench/chunked_precision.py " + " ".join(argv or sys.argv[1:])
    lines = [
        "# The chunked head under bf16 autocast",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {report['machine']}; the CPU's bf16 units: {report['cpu_bf16_units']}. One "
        f"chunked forward-KL step, value and backward, B {b} × L {length}, H {h}, V {v:,}, "
        f"chunks of {SIZES['chunk']}, student and teacher hidden states in float32. "
        f"{args.rounds} ABBA rounds; medians.",
        "",
        "| way | ms per step |",
        "|---|---:|",
        *(f"| {name} | {ms:.0f} |" for name, ms in report["ms"].items()),
        "",
        f"bf16 products take {report['bf16_over_float32']:.2f}× the float32 products' time "
        f"(median of the rounds' ratios; rounds {', '.join(f'{r:.2f}' for r in ratios)}).",
        "",
    ]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chunked_precision.json").write_text(json.dumps(report, indent=2))
    (out / "chunked_precision.md").write_text("\n".join(lines))
    print(json.dumps({k: report[k] for k in ("ms", "bf16_over_float32")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
