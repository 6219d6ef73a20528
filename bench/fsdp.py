"""FSDP2 against DDP and one process: the SmolLM2-135M-Instruct teacher distilled into its
depth-pruned 64M student (token_kd, forward KL over chunks of the head) with ``train_loop``,
the same global batch three ways: one process, two DDP ranks, two FSDP ranks
(``train.strategy: fsdp``). Per-rank peak RSS (ru_maxrss: interpreter, libraries, the models
as loaded and training) and tokens/s over the timed steps (the first step is warm-up).

    nice -n 5 python bench/fsdp.py            # writes bench/results/fsdp.md and .json

Each way runs in fresh processes (torchrun for two ranks), one way at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# The student of bench/llm.py: the teacher's 10 most influential layers (63.7M of 134.5M).
KEEP = [0, 1, 8, 19, 20, 21, 23, 24, 28, 29]
# glibc raises its mmap threshold each time a large block is freed, after which freed tensors
# stay in the heap and count in RSS; a fixed threshold returns them, in every way alike.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}
WAYS = [("one process", "ddp", 1), ("DDP, 2 ranks", "ddp", 2), ("FSDP2, 2 ranks", "fsdp", 2)]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One rank of one way: load, distil ``args.steps`` steps, write what it measured."""
    import torch
    from torch.utils.data import DataLoader

    from kdistill.distiller import Distiller, Teacher
    from kdistill.methods import preset_terms
    from kdistill.models.hf import HFModel
    from kdistill.models.pruning import prune_layers
    from kdistill.models.smollm2 import smollm2_directory
    from kdistill.training.acceleration import make_accelerator
    from kdistill.training.loop import Loop, train_loop
    from kdistill.training.optimization import Optimization

    torch.set_num_threads(1)
    accelerator = make_accelerator("cpu", strategy=args.strategy)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(smollm2_directory(), dtype=torch.float32)
    teacher.config.use_cache = False
    student = HFModel(prune_layers(teacher, KEEP), "causal-lm")
    teacher = HFModel(teacher, "causal-lm")
    loaded = rss_mib()
    batch = args.global_batch // accelerator.num_processes
    tokens = torch.randint(
        0, 49152, (args.steps * args.global_batch, args.seq_len + 1),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    data = [
        {"input": t[:-1], "target": t[1:], "mask": torch.ones(args.seq_len, dtype=torch.bool)}
        for t in tokens
    ]
    terms = preset_terms("token_kd", loss="forward_kl", chunk_size=args.chunk)
    frozen = Teacher(teacher)
    distiller = Distiller.build(student, terms, teacher=frozen)
    stamps = []
    started = time.perf_counter()
    train_loop(
        distiller,
        DataLoader(data, batch_size=batch),
        teacher=frozen,
        epochs=1,
        lr=1e-3,
        optim=Optimization(optimizer="adamw", schedule="constant"),
        loop=Loop(log_every=1, log_step=lambda record: stamps.append(time.perf_counter())),
        accelerator=accelerator,
        progress=False,
    )
    result = {
        "rank": accelerator.process_index,
        "processes": accelerator.num_processes,
        "sharded": bool(getattr(accelerator, "is_fsdp2", False)),
        "rss_loaded_mib": loaded,
        "rss_peak_mib": rss_mib(),
        # Step times are logged on the main process only.
        "tokens_per_s": (len(stamps) - 1)
        * args.global_batch
        * args.seq_len
        / (stamps[-1] - stamps[0])
        if stamps
        else None,
        "train_seconds": time.perf_counter() - started,
    }
    name = f"{args.strategy}-{accelerator.num_processes}-rank{accelerator.process_index}.json"
    Path(args.out, name).write_text(json.dumps(result))


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def run_way(strategy: str, processes: int, args, out: Path) -> list[dict]:
    script = [str(Path(__file__).resolve()), "--child", strategy, "--out", str(out)]
    script += ["--steps", str(args.steps), "--global-batch", str(args.global_batch)]
    script += ["--seq-len", str(args.seq_len), "--chunk", str(args.chunk)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        command = [str(torchrun), "--nproc_per_node", str(processes)]
        command += ["--master_port", free_port(), *script]
    subprocess.run(command, check=True, env={**os.environ, **MALLOC})
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob(f"{strategy}-{processes}-*"))]
    return sorted(ranks, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help="steps, the first one warm-up")
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--chunk", type=int, default=64, help="positions per chunk of the token losses"
    )
    args = parser.parse_args()
    if args.child:
        args.strategy = args.child
        child(args)
        return
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, strategy, processes in WAYS:
            ranks = run_way(strategy, processes, args, Path(folder))
            rows.append({"way": label, "strategy": strategy, "ranks": ranks})
    one, ddp, fsdp = rows
    peak = {row["way"]: max(r["rss_peak_mib"] for r in row["ranks"]) for row in rows}
    summary = {
        "fsdp_peak_rss_over_one_process": peak[fsdp["way"]] / peak[one["way"]],
        "fsdp_peak_rss_over_ddp_rank": peak[fsdp["way"]] / peak[ddp["way"]],
        "fsdp_tokens_per_s_over_ddp": fsdp["ranks"][0]["tokens_per_s"]
        / ddp["ranks"][0]["tokens_per_s"],
    }
    setup = (
        f"Machine: {platform.machine()}, torch {torch.__version__}, one thread per process, "
        f"CPU (gloo). {args.steps} steps (the first untimed) × global batch "
        f"{args.global_batch} × {args.seq_len} tokens, AdamW, float32, forward KL over chunks "
        f"of {args.chunk} positions. Student: layers {KEEP} of SmolLM2-135M-Instruct. Random "
        f"tokens. Every process runs with {' '.join(f'{k}={v}' for k, v in MALLOC.items())}."
    )
    command = "nice -n 5 python bench/fsdp.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    record = {
        "command": command.strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup": setup,
        "ways": rows,
        **summary,
    }
    (RESULTS / "fsdp.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# FSDP2 vs DDP vs one process: SmolLM2-135M → pruned 64M student",
        "",
        f"Command: `{record['command']}` ({record['date']}, one run)",
        "",
        setup,
        "",
        "| way | per-rank RSS after loading (MiB) | per-rank peak RSS (MiB) | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        loaded = " / ".join(f"{r['rss_loaded_mib']:.0f}" for r in row["ranks"])
        peaks = " / ".join(f"{r['rss_peak_mib']:.0f}" for r in row["ranks"])
        lines.append(
            f"| {row['way']} | {loaded} | {peaks} | {row['ranks'][0]['tokens_per_s']:.1f} |"
        )
    lines += [
        "",
        f"FSDP2 per-rank peak RSS: {summary['fsdp_peak_rss_over_one_process']:.2f}× one "
        f"process's (target ≤ 0.65), {summary['fsdp_peak_rss_over_ddp_rank']:.2f}× a DDP "
        f"rank's; tokens/s {summary['fsdp_tokens_per_s_over_ddp']:.2f}× DDP's (target ≥ 0.8).",
        "",
        "What limits them. Memory: each rank holds half of the student's weights, gradients "
        "and AdamW state and half of the teacher's, but not half of the rest: the interpreter "
        "and libraries, the models as loaded (every rank reads both whole before sharding: the "
        "'after loading' column), activations and loss chunks, and the gathered embedding and "
        "head of both models (tied, 28M parameters each), which the chunked losses read after "
        "the forward pass. Speed: FSDP all-gathers every block in the forward and the backward "
        "pass and reduce-scatters its gradients, through gloo (memory copies on the same cores "
        "that compute), where DDP all-reduces once a step. Timings on a shared 2-core machine "
        "(other work ran beside it): ratios within this one run only.",
    ]
    (RESULTS / "fsdp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
