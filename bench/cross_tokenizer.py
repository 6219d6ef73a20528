"""Cross-tokenizer distillation on Shakespeare: SmolLM2-135M (its own 49,152-token byte-level
BPE) teaches a small GPT that reads a BPE of its own, trained here on the training plays with the
``tokenizers`` library (8,192 entries, saved beside the results; nothing is downloaded).

Steps, each timed:
  1. the student's tokenizer: a byte-level BPE trained on the 34 training plays;
  2. windows of 128 student tokens from the training plays (``--train-tokens`` of them, evenly
     spaced) and from the held-out plays (Hamlet, The Tempest), each with the teacher's own
     tokens of the same bytes and the byte-offset alignment (``kdistill.data.cross_tokenizer``);
  3. the teacher once: its bits per byte on the held-out windows, and its top-k next-token
     distribution on the training windows (plus each target's log-probability), kept in memory
     so every student and seed reads the same teacher without running it again;
  4. per seed: a scratch student (token cross-entropy only) and one student per cross-tokenizer
     loss (``method: cross_tokenizer``: (1−α)·CE + α·loss), same initialisation, batches,
     optimiser and steps; each scored in bits per byte on the held-out windows.

Bits per byte = Σ cross-entropy (nats) / (ln 2 · Σ bytes of the target tokens): tokenizer-free,
so teacher and students compare although they predict different tokens.

    python bench/cross_tokenizer.py                      # 3 seeds (the results file)
    python bench/cross_tokenizer.py --seeds 1 --methods uld   # one run's cost

The default scale is the data-limited regime where a teacher matters most and a CPU can afford
three seeds: 32 training windows (4,096 student tokens) seen 40 times (80 steps of 16), α = 0.9.
Measured on one shared thread before choosing it (seed 0, teacher 1.87 bits per byte): 64
windows × 2 epochs, α = 0.5: scratch 3.774, hybrid 3.751, ULD 3.779, ALM 3.771; 64 windows ×
20 epochs, α = 0.5: scratch 3.241, hybrid 3.202 (3 % of the gap); 64 windows × 40 epochs,
α = 0.9: scratch 3.365 (overfitting), hybrid 3.072 (19.7 % of the gap).

Writes bench/results/cross_tokenizer.md and .json (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kdistill.data.cross_tokenizer import cross_tokenizer_windows, train_bpe
from kdistill.data.shakespeare import load_codec, read_plays, split_plays
from kdistill.distiller import Distiller
from kdistill.losses.cross_tokenizer import AlignedTeacher
from kdistill.losses.sparse import SparseTeacher
from kdistill.methods import Term, preset_terms
from kdistill.modeling import ModelOutput, call_model
from kdistill.models import create_model
from kdistill.teachers.cross_tokenizer import shared_vocabulary, vocabulary_projection

RESULTS = Path(__file__).resolve().parent / "results"
CACHE_FIELDS = ("index", "log_probs", "tail_log_prob", "target_log_prob")
LN2 = math.log(2)


def batches(count: int, size: int, generator: torch.Generator | None):
    order = torch.randperm(count, generator=generator) if generator else torch.arange(count)
    return [order[k : k + size] for k in range(0, count, size)]


@torch.no_grad()
def teacher_pass(teacher, data, top_k: int, batch_size: int):
    """The teacher's bits (Σ nats / ln 2) over its targets, and its top-k on every position."""
    ids, target, nbytes = (data.teacher[k] for k in ("input_ids", "target", "bytes"))
    counted = nbytes > 0
    nats, fields = 0.0, []
    for rows in batches(len(ids), batch_size, None):
        log_p = torch.log_softmax(call_model(teacher, {"input_ids": ids[rows]}).float(), -1)
        target_log_p = log_p.gather(-1, target[rows][..., None]).squeeze(-1)
        nats -= float(target_log_p[counted[rows]].sum())
        if top_k:
            top, index = log_p.topk(top_k, dim=-1)
            tail = torch.logsumexp(log_p.scatter(-1, index, float("-inf")), -1)
            fields.append((index.int(), top, tail, target_log_p))
    cache = [torch.cat(f) for f in zip(*fields)] if fields else None
    return nats / LN2, int(nbytes[counted].sum()), cache


def student_bits(student, data, batch_size: int) -> float:
    student.eval()
    bits = 0.0
    with torch.no_grad():
        for rows in batches(len(data), batch_size, None):
            logits = call_model(student, {"input_ids": data.student["input_ids"][rows]})
            nats = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), data.student["target"][rows].flatten(), reduction="none"
            )
            bits += float(nats[data.student["mask"][rows].flatten()].sum()) / LN2
    return bits


def train_student(method, data, cache, maps, vocab, args, seed: int) -> tuple:
    torch.manual_seed(seed)
    student = create_model(
        "gpt", num_classes=vocab, input_shape=(args.block_size,), **json.loads(args.student)
    )
    if method == "scratch":
        terms = [Term("ce", "token_ce", teacher=None)]
    else:
        terms = preset_terms("cross_tokenizer", loss=method, alpha=args.alpha, top_k=args.uld_k)
    distiller = Distiller(student, terms).train()
    steps = args.epochs * math.ceil(len(data) / args.batch_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
    )
    generator = torch.Generator().manual_seed(seed)
    started, last = time.perf_counter(), float("nan")
    for _ in range(args.epochs):
        for rows in batches(len(data), args.batch_size, generator):
            batch = {
                "input": {"input_ids": data.student["input_ids"][rows]},
                "target": data.student["target"][rows],
                "mask": data.student["mask"][rows],
            }
            teacher_out = None
            if method != "scratch":
                index, top, tail, target_log_p = (f[rows] for f in cache)
                sparse = SparseTeacher(index, top, tail, temperature=1.0, vocab_size=None)
                aligned = AlignedTeacher(
                    sparse,
                    data.teacher["target"][rows],
                    data.teacher["chunk"][rows],
                    data.teacher["student_chunk"][rows],
                    target_log_prob=target_log_p,
                    shared=maps[0],
                    projection=maps[1],
                )
                teacher_out = ModelOutput(aligned)
            loss = distiller(batch, teacher_out)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            last = float(loss.detach())
    return student, time.perf_counter() - started, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="hybrid,uld,alm")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--train-tokens", type=int, default=4096)
    parser.add_argument("--test-tokens", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=64, help="teacher entries kept per position")
    parser.add_argument("--uld-k", type=int, default=None, help="ULD pairs only this many")
    parser.add_argument("--student", default='{"n_layer": 2, "n_head": 4, "n_embd": 128}')
    parser.add_argument("--workdir", default=None, help="where the tokenizer is saved")
    parser.add_argument("--name", default="cross_tokenizer")
    parser.add_argument(
        "--reuse-teacher", action="store_true", help="read the teacher's outputs from --workdir"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--same-tokenizer-reference",
        metavar="teacher=P,scratch=P,student=P",
        help="add the SmolLM2 recipe's test perplexities (configs/smollm2_shakespeare.yaml, "
        "same tokenizer, token KD) in bits per byte to the stored results; trains nothing",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.same_tokenizer_reference:
        stored = json.loads((RESULTS / f"{args.name}.json").read_text())
        stored["reference"] = same_tokenizer_reference(args.same_tokenizer_reference)
        stored["reference"]["command"] = (
            "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
        )
        write(stored, args.name)
        return
    begun = time.perf_counter()
    timings = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        print(f"{name}: {timings[name]} s", file=sys.stderr, flush=True)
        return time.perf_counter()

    now = time.perf_counter()
    plays = read_plays()
    parts = split_plays(plays)
    text = {split: "\n".join(plays[p] for p in parts[split]) for split in ("train", "test")}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kdistill-xtok-"))
    workdir.mkdir(parents=True, exist_ok=True)
    student_tokenizer = train_bpe(text["train"], args.vocab, workdir / "tokenizer.json")
    now = lap("student tokenizer", now)
    teacher_tokenizer = load_codec().tokenizer
    windows = {
        split: cross_tokenizer_windows(
            text[split],
            student_tokenizer,
            teacher_tokenizer,
            args.block_size,
            limit=max(1, tokens // args.block_size),
        )
        for split, tokens in (("train", args.train_tokens), ("test", args.test_tokens))
    }
    now = lap("windows and alignment", now)
    test, train = windows["test"][0], windows["train"][0]
    if args.reuse_teacher and (workdir / "teacher.safetensors").is_file():
        stored = load_file(workdir / "teacher.safetensors")
        cache = [stored[k] for k in CACHE_FIELDS]
        teacher_bits, teacher_bytes = float(stored["bits"]), int(stored["bytes"])
        now = lap("teacher outputs read back (--reuse-teacher)", now)
    else:
        teacher = create_model("smollm2_135m", num_classes=49152, input_shape=(args.block_size,))
        teacher.eval().requires_grad_(False)
        now = lap("teacher load", now)
        teacher_bits, teacher_bytes, _ = teacher_pass(teacher, test, 0, 8)
        now = lap("teacher held-out", now)
        _, _, cache = teacher_pass(teacher, train, args.top_k, 8)
        now = lap("teacher top-k on training windows", now)
        del teacher
        stored = dict(zip(CACHE_FIELDS, cache))
        stored["bits"], stored["bytes"] = torch.tensor(teacher_bits), torch.tensor(teacher_bytes)
        save_file(stored, workdir / "teacher.safetensors")
    shared = shared_vocabulary(teacher_tokenizer, student_tokenizer)
    projection = vocabulary_projection(teacher_tokenizer, student_tokenizer)
    test_bytes = int(test.student["bytes"][test.student["mask"]].sum())

    methods = ["scratch", *[m for m in args.methods.split(",") if m]]
    runs = []
    for seed in range(args.seeds):
        for method in methods:
            student, seconds, last = train_student(
                method, train, cache, (shared, projection), args.vocab, args, seed
            )
            bpb = student_bits(student, test, 32) / test_bytes
            runs.append(
                {"seed": seed, "method": method, "bpb": bpb, "train_s": seconds, "loss": last}
            )
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    lap("students", now)
    timings["total"] = round(time.perf_counter() - begun, 1)
    timings["total CPU"] = round(time.process_time(), 1)
    summary = summarise(runs, teacher_bits / teacher_bytes, methods)
    result = {
        "command": "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_write", "name")},
        "data": {split: stats for split, (_, stats) in windows.items()},
        "shared_tokens": int((shared >= 0).sum()),
        "test_bytes": {"student": test_bytes, "teacher": teacher_bytes},
        "timings_s": timings,
        "teacher_bpb": teacher_bits / teacher_bytes,
        "summary": summary,
        "runs": runs,
    }
    print(json.dumps(summary))
    if not args.no_write:
        write(result, args.name)


def same_tokenizer_reference(perplexities: str) -> dict:
    """Perplexities of the SmolLM2 recipe's roles (its 64 test windows of 128 SmolLM2 tokens,
    Hamlet and The Tempest) in bits per byte: Σ NLL = tokens · ln(perplexity), over the UTF-8
    bytes of the same counted target tokens, counted here from the recipe's own windows."""
    from kdistill.data.shakespeare import load_plays
    from kdistill.teachers.cross_tokenizer import token_strings

    splits = load_plays(block_size=128, max_tokens={"train": 49152, "val": 4096, "test": 8192})
    sizes = torch.tensor([len(t) for t in token_strings(splits.test.codec.tokenizer)])
    tokens = nbytes = 0
    for sample in (splits.test[i] for i in range(len(splits.test))):
        counted = sample["target"][sample["mask"].bool()]
        tokens, nbytes = tokens + len(counted), nbytes + int(sizes[counted].sum())
    given = dict(pair.split("=") for pair in perplexities.split(","))
    return {
        "recipe": "configs/smollm2_shakespeare.yaml",
        "test_tokens": tokens,
        "test_bytes": nbytes,
        "perplexity": {role: float(p) for role, p in given.items()},
        "bpb": {role: tokens * math.log(float(p)) / (LN2 * nbytes) for role, p in given.items()},
    }


def summarise(runs: list[dict], teacher_bpb: float, methods: list[str]) -> dict:
    by = {m: [r["bpb"] for r in runs if r["method"] == m] for m in methods}
    scratch = by["scratch"]
    out = {}
    for method, values in by.items():
        gaps = [(s - v) / (s - teacher_bpb) for s, v in zip(scratch, values)]
        out[method] = {
            "bpb_mean": statistics.mean(values),
            "bpb_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "gap_recovered_mean": statistics.mean(gaps),
            "wins_every_seed": all(v < s for s, v in zip(scratch, values)),
        }
    return out


def write(result: dict, name: str) -> None:
    summary, data = result["summary"], result["data"]
    seeds = sorted({r["seed"] for r in result["runs"]})
    # A vocabulary of 256 is the bytes themselves: the BPE learns no merge.
    reads = "bytes" if result["settings"]["vocab"] <= 256 else "its own BPE"
    lines = [
        f"# Cross-tokenizer distillation: SmolLM2-135M → a GPT that reads {reads} (Shakespeare)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; {result['date']}. Seeds: {', '.join(map(str, seeds))} "
        "(student initialisation and batch order; one teacher pass serves them all).",
        "",
        f"Settings: {json.dumps(result['settings'])}.",
        "",
        f"Data: training windows {data['train']['windows']} × {result['settings']['block_size']}"
        f" student tokens from the 34 training plays; held out: {data['test']['windows']} "
        f"windows of Hamlet and The Tempest ({result['test_bytes']['student']:,} bytes scored "
        f"for the students, {result['test_bytes']['teacher']:,} for the teacher, its own tokens "
        "of the same windows). Bytes aligned (share of the students' target bytes inside a "
        f"chunk both sides cover): training {data['train']['aligned_bytes']:.2%}, held out "
        f"{data['test']['aligned_bytes']:.2%}. Vocabulary entries with the same string in both "
        f"tokenizers: {result['shared_tokens']:,} of {result['settings']['vocab']:,}.",
        "",
        f"Teacher: {result['teacher_bpb']:.3f} bits per byte.",
        "",
        "| student | bits per byte (mean ± std) | per seed | share of the teacher–scratch gap"
        " recovered | beats scratch every seed |",
        "|---|---:|---|---:|---|",
    ]
    for method, row in summary.items():
        per_seed = ", ".join(f"{r['bpb']:.3f}" for r in result["runs"] if r["method"] == method)
        gap = "—" if method == "scratch" else f"{row['gap_recovered_mean']:.1%}"
        wins = "—" if method == "scratch" else ("yes" if row["wins_every_seed"] else "no")
        lines.append(
            f"| {method} | {row['bpb_mean']:.3f} ± {row['bpb_std']:.3f} | {per_seed} | {gap} "
            f"| {wins} |"
        )
    timings = ", ".join(f"{k} {v} s" for k, v in result["timings_s"].items())
    lines += ["", f"Time (one thread): {timings}.", ""]
    reference = result.get("reference")
    if reference:
        bpb, ppl = reference["bpb"], reference["perplexity"]
        gap = (bpb["scratch"] - bpb["student"]) / (bpb["scratch"] - bpb["teacher"])
        lines += [
            "## Reference: same-tokenizer KD (the SmolLM2 recipe)",
            "",
            f"`{reference['recipe']}`: SmolLM2-135M teaches a 63.7M student pruned from itself "
            "(10 of 30 layers, the teacher's own tokenizer) with token-level forward KL (α 0.5), "
            "two epochs over 49,152 training tokens from the teacher's top-64 + 16-draw cache, one "
            "seed: another student, budget and test "
            "sample than the race above, so a reference for the size of a same-tokenizer gain, "
            "not a same-budget comparison. Its recorded test perplexities (the language-models "
            f"guide) in bits per byte over its {reference['test_tokens']:,} test tokens "
            f"({reference['test_bytes']:,} bytes of Hamlet and The Tempest; "
            f"`{reference['command']}`):",
            "",
            "| model | test perplexity | bits per byte | share of the teacher–scratch gap "
            "recovered |",
            "|---|---:|---:|---:|",
        ]
        for role in ("teacher", "scratch", "student"):
            share = f"{gap:.1%}" if role == "student" else "—"
            lines.append(f"| {role} | {ppl[role]:.2f} | {bpb[role]:.3f} | {share} |")
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
