"""What keeping freed host memory in the process (``kdistill.training.host_memory``) does to a
language model's training on the CPU: the race's ways (bench/llm.py) with the allocator setting
on, as kdistill trains, and off, in fresh processes, alternated ABBA.

    python bench/host_memory.py --workdir /tmp/race/work            # prepares it if empty
    python bench/host_memory.py --workdir DIR --ways kdistill_cached --rounds 2

Per run: the training call's wall and CPU seconds, its system seconds and minor page faults
(getrusage of the way's process around the call), tokens/s and peak RSS. The summary gives
the median over rounds of the per-round ratio on/off. Writes bench/results/host_memory.md and
.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MARK = "BENCH-HOST-MEMORY "


def child(args) -> None:
    """One way in this process, the setting on or off; prints its record after MARK."""
    import llm

    import kdistill.training.loop as loop

    if args.setting == "off":
        loop.keep_freed_memory = lambda: contextlib.nullcontext(False)
    if args.mmap_mib:
        import kdistill.training.host_memory as host_memory

        host_memory.TRAINING[host_memory.M_MMAP_THRESHOLD] = args.mmap_mib << 20
    way_args = llm.parse_args(
        ["--way", args.way, "--mode", "full", "--workdir", args.workdir, "--threads", "1"]
        + ["--curve-every", "0"]
        + ([f"--chunk-size={args.chunk_size}"] if args.chunk_size else [])
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    record = llm.run_way(way_args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    record.update(
        setting=args.setting,
        # The process's, so model loading is in them; the same for both settings.
        sys_s=after.ru_stime - before.ru_stime,
        minor_faults=after.ru_minflt - before.ru_minflt,
    )
    print(MARK + json.dumps(record), flush=True)


def spawn(args, way: str, setting: str) -> dict:
    command = [sys.executable, __file__, "--child", setting, "--way", way]
    command += ["--workdir", args.workdir]
    command += [f"--chunk-size={args.chunk_size}"] if args.chunk_size else []
    command += [f"--mmap-mib={args.mmap_mib}"] if args.mmap_mib else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"bench/host_memory.py: {way} ({setting}) failed")
    return json.loads(lines[-1][len(MARK) :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ways", default="kdistill_cached,kdistill_live")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: bench/llm.py's")
    parser.add_argument(
        "--mmap-mib", type=int, default=None, help="the mmap threshold while training (a trial)"
    )
    parser.add_argument("--child", choices=("on", "off"), dest="setting")
    parser.add_argument("--way", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.setting:
        child(args)
        return 0
    if not (Path(args.workdir) / "prepare.json").exists():
        subprocess.run(
            [sys.executable, str(Path(__file__).parent / "llm.py"), "--way", "prepare",
             "--mode", "full", "--workdir", args.workdir, "--threads", "1"],
            check=True,
        )  # fmt: skip
    runs = []
    for way in args.ways.split(","):
        for round_ in range(args.rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for setting in order:
                started = time.perf_counter()
                record = spawn(args, way, setting)
                record["round"] = round_
                runs.append(record)
                print(
                    f"{way} round {round_} {setting}: {record['tokens_per_s']:.1f} tokens/s, "
                    f"sys {record['sys_s']:.1f} s, {record['minor_faults']:,} faults, "
                    f"peak {record['peak_mb']:.0f} MiB, ppl {record['ppl']:.2f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    import llm

    summary = {}
    for way in args.ways.split(","):
        pairs = [
            {r["setting"]: r for r in runs if r["way"] == way and r["round"] == i}
            for i in range(args.rounds)
        ]

        def ratio(key, pairs=pairs):
            return statistics.median(p["on"][key] / p["off"][key] for p in pairs)

        summary[way] = {
            "tokens_per_s_ratio": ratio("tokens_per_s"),
            "tokens_per_cpu_s_ratio": ratio("tokens_per_cpu_s"),
            "peak_mb_ratio": ratio("peak_mb"),
            "sys_s": {s: statistics.median(p[s]["sys_s"] for p in pairs) for s in ("on", "off")},
            "minor_faults": {
                s: statistics.median(p[s]["minor_faults"] for p in pairs) for s in ("on", "off")
            },
            "ppl": {s: pairs[0][s]["ppl"] for s in ("on", "off")},
        }
    name = "host_memory" + (f"_chunk{args.chunk_size}" if args.chunk_size else "")
    name += f"_mmap{args.mmap_mib}" if args.mmap_mib else ""
    (RESULTS / f"{name}.json").write_text(json.dumps({"runs": runs, "summary": summary}))
    lines = [
        "# Keeping freed host memory while training (SmolLM2 race, CPU)",
        "",
        f"Command: `python bench/host_memory.py --workdir DIR --ways {args.ways} "
        f"--rounds {args.rounds}"
        + (f" --chunk-size {args.chunk_size}" if args.chunk_size else "")
        + (f" --mmap-mib {args.mmap_mib}`" if args.mmap_mib else "`"),
        "",
        "The race's ways (bench/llm.py: 32 steps × 4 × 128 tokens, 1 thread, forward KL, "
        f"chunks of {args.chunk_size or llm.parse_args([]).chunk_size} positions) in "
        "fresh processes, `kdistill.training.host_memory.keep_freed_memory` on (as kdistill "
        "trains) and off, ABBA. Ratios: median over rounds of on/off. System seconds and minor "
        "faults: the way's whole process (model loading included).",
        "",
        "| way | tokens/s on/off | tokens/CPU-s on/off | peak RSS on/off | system s on / off "
        "| minor faults on / off | ppl on / off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for way, s in summary.items():
        lines.append(
            f"| {way} | {s['tokens_per_s_ratio']:.3f} | {s['tokens_per_cpu_s_ratio']:.3f} "
            f"| {s['peak_mb_ratio']:.3f} | {s['sys_s']['on']:.1f} / {s['sys_s']['off']:.1f} "
            f"| {s['minor_faults']['on']:,.0f} / {s['minor_faults']['off']:,.0f} "
            f"| {s['ppl']['on']:.2f} / {s['ppl']['off']:.2f} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
