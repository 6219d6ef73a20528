"""Where the time of a distillation step goes: samples per second of

  (a) a plain PyTorch loop training the student alone (cross-entropy),
  (b) kdistill with the live teacher (teacher forward every step),
  (c) kdistill reading the teacher's outputs from the cache (kdistill.teachers.cache),
  (d) the teacher's forward pass alone,

on the method benchmark's pair (resnet56 → resnet8) on Fashion-MNIST, and the ratios: the
targets are (c) ≥ 0.9 × (a), and (b) within 10 % of 1 / (1/a + 1/d), what (a) and (d) predict.
The ways are measured in interleaved rounds in one process (the machine is shared and noisy)
and each takes its best round. Throughput does not depend on the weights' values, so the
teacher is not trained here.

    python bench/throughput.py            # ~10 minutes on 2 cores
    python bench/throughput.py --quick    # ~2 minutes; last line is one JSON object
    python bench/throughput.py --device cuda --dataset digits --quick   # on a GPU
    python bench/throughput.py --tutorial --threads 1   # framework overhead, ~5 minutes

Writes bench/results/throughput.md and .json (throughput_quick.* for --quick, *_cuda.* on a GPU).

``--tutorial`` measures what the framework itself costs, on the pair of PyTorch's knowledge
distillation tutorial (DeepNN → LightNN, CIFAR-shaped random tensors): ``fit`` with
cross-entropy alone, and ``fit`` distilling from the cached teacher, each against the tutorial's
plain cross-entropy loop, in ABBA-alternated rounds (plain, fit, fit, plain: a drift of the
machine's speed hits both ways alike), reporting the median of the per-round ratios. Its rows
replace the "Framework overhead" section of throughput.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from kdistill.data import ArrayDataset, load_dataset
from kdistill.distiller import Distiller, Teacher, call_model
from kdistill.methods import Term, hinton_kd
from kdistill.models import create_model
from kdistill.teachers.cache import CachedTeacher, build_cache
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import train_loop
from kdistill.training.optimization import Optimization

RESULTS = Path(__file__).resolve().parent / "results"


def loader(dataset, batch_size, seed=0):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )


def synchronize(device: torch.device) -> None:
    """A GPU runs ahead of the host: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(student, dataset, batch_size, device) -> float:
    """The baseline a user would write: no teacher, no library."""
    student.to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()
    seen, started = 0, time.perf_counter()
    for batch in loader(dataset, batch_size):
        inputs = batch["input"].to(device, non_blocking=True)
        loss = F.cross_entropy(student(inputs), batch["target"].to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch["target"])
    synchronize(device)
    return seen / (time.perf_counter() - started)


def kdistill_fit(student, teacher, dataset, batch_size, accelerator) -> float:
    distiller = Distiller(student, hinton_kd())
    seen = (len(dataset) // batch_size) * batch_size
    started = time.perf_counter()
    train_loop(
        distiller,
        loader(dataset, batch_size),
        teacher=teacher,
        epochs=1,
        lr=1e-3,
        optim=Optimization(schedule="constant"),
        accelerator=accelerator,
        progress=False,
    )
    synchronize(accelerator.device)
    return seen / (time.perf_counter() - started)


@torch.inference_mode()
def teacher_alone(model, dataset, batch_size, device) -> float:
    model.eval().to(device)
    seen, started = 0, time.perf_counter()
    for batch in loader(dataset, batch_size):
        call_model(model, batch["input"].to(device, non_blocking=True))
        seen += len(batch["target"])
    synchronize(device)
    return seen / (time.perf_counter() - started)


# --- the tutorial pair: framework overhead -----------------------------------------------------

OVERHEAD = "## Framework overhead: the PyTorch tutorial's pair"


class DeepNN(torch.nn.Module):
    """The teacher of PyTorch's knowledge distillation tutorial
    (beginner/knowledge_distillation_tutorial)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LightNN(torch.nn.Module):
    """The tutorial's student."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def tutorial_fit(student, terms, teacher, dataset, batch_size, accelerator) -> float:
    seen = (len(dataset) // batch_size) * batch_size
    started = time.perf_counter()
    train_loop(
        Distiller(student, terms),
        loader(dataset, batch_size),
        teacher=teacher,
        epochs=1,
        lr=1e-3,
        optim=Optimization(schedule="constant"),
        accelerator=accelerator,
        progress=False,
    )
    synchronize(accelerator.device)
    return seen / (time.perf_counter() - started)


def abba(plain, framework, rounds: int) -> dict:
    """Median over rounds of framework/plain throughput, each round measured A B B A."""
    ratios, a_best, b_best = [], 0.0, 0.0
    for _ in range(rounds):
        a1, b1, b2, a2 = plain(), framework(), framework(), plain()
        ratios.append((b1 + b2) / (a1 + a2))
        a_best, b_best = max(a_best, a1, a2), max(b_best, b1, b2)
    ratios.sort()
    return {
        "ratio": ratios[len(ratios) // 2],
        "ratios": ratios,
        "plain_sps": a_best,
        "fit_sps": b_best,
    }


def tutorial(args) -> None:
    torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.device)
    device = accelerator.device
    generator = torch.Generator().manual_seed(0)
    n = args.subset or 4096
    train = ArrayDataset(
        torch.randn(n, 3, 32, 32, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )
    set_seed(0)
    teacher = Teacher(DeepNN()).to(device)
    batch = args.batch_size
    rounds = args.rounds or 7

    def student():
        set_seed(1)
        return LightNN()

    ce = [Term("ce", "ce", teacher=None)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = build_cache(
            Path(tmp) / "cache",
            teacher,
            train,
            fingerprint={"bench": "tutorial"},
            dtype="float16",
            batch_size=256,
            accelerator=accelerator,
        )
        cache_seconds = time.perf_counter() - started
        cached = CachedTeacher(cache)
        plain = lambda: plain_loop(student(), train, batch, device)
        plain()  # warm-up
        results = {
            "fit_ce": abba(
                plain, lambda: tutorial_fit(student(), ce, None, train, batch, accelerator), rounds
            ),
            "fit_cached_kd": abba(
                plain,
                lambda: tutorial_fit(student(), hinton_kd(), cached, train, batch, accelerator),
                rounds,
            ),
        }
    for name, result in results.items():
        print(
            f"{name}: median ratio {result['ratio']:.3f} over {rounds} ABBA rounds "
            f"{[round(r, 3) for r in result['ratios']]}",
            flush=True,
        )
    command = "python bench/throughput.py " + " ".join(sys.argv[1:])
    rows = [
        OVERHEAD,
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {args.threads} torch "
        f"thread(s), {_device_name(device)}, torch {torch.__version__}; "
        f"DeepNN → LightNN on {n} CIFAR-shaped random tensors, "
        f"batch {batch}, Adam, one epoch per measurement, median "
        f"of {rounds} ABBA rounds (plain, fit, fit, plain).",
        "",
        "| way | samples/s (best) | plain loop samples/s "
        "(best) | median ratio to the plain loop | target |",
        "|---|---:|---:|---:|---:|",
        f"| `fit`, cross-entropy alone | {results['fit_ce']['fit_sps']:.1f} | "
        f"{results['fit_ce']['plain_sps']:.1f} | {results['fit_ce']['ratio']:.3f} | ≥ 0.98 |",
        f"| `fit`, KD from the cached teacher | {results['fit_cached_kd']['fit_sps']:.1f} | "
        f"{results['fit_cached_kd']['plain_sps']:.1f} | "
        f"{results['fit_cached_kd']['ratio']:.3f} | ≥ 0.97 |",
        "",
        "The plain loop is the tutorial's cross-entropy loop. "
        f"Building the teacher cache took {cache_seconds:.1f} s.",
    ]
    section = "\n".join(rows) + "\n"
    print(section)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "throughput.md"
    kept = path.read_text().split(OVERHEAD)[0].rstrip() + "\n\n" if path.is_file() else ""
    path.write_text(kept + section)
    (RESULTS / "throughput_tutorial.json").write_text(
        json.dumps({"command": command, **results, "cache_seconds": cache_seconds}, indent=2)
    )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small slice, ~2 minutes")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument(
        "--subset", type=int, default=None, help="samples used (default 4000, quick 900)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--tutorial",
        action="store_true",
        help="framework overhead on the tutorial pair (batch 128)",
    )
    args = parser.parse_args()
    if args.tutorial:
        if args.batch_size == 64:
            args.batch_size = 128  # the tutorial's batch
        return tutorial(args)
    subset = args.subset or (900 if args.quick else 4000)
    rounds = args.rounds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    splits = load_dataset(args.dataset, subset=subset, val_fraction=0.02, test_fraction=0.1)
    train = splits.train
    shape = dict(num_classes=splits.num_classes, input_shape=splits.input_shape)
    accelerator = make_accelerator(args.device)
    device = accelerator.device
    set_seed(0)
    teacher_model = create_model(args.teacher, **shape)
    teacher = Teacher(teacher_model).to(device)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = build_cache(
            Path(tmp) / "cache",
            teacher,
            train,
            fingerprint={"bench": True},
            dtype="float16",
            batch_size=256,
            accelerator=accelerator,
        )
        cache_seconds = time.perf_counter() - started
        cached = CachedTeacher(cache)

        def student():
            set_seed(1)
            return create_model(args.student, **shape)

        ways = {
            "plain_sps": lambda: plain_loop(student(), train, args.batch_size, device),
            "live_kd_sps": lambda: kdistill_fit(
                student(), teacher, train, args.batch_size, accelerator
            ),
            "cached_kd_sps": lambda: kdistill_fit(
                student(), cached, train, args.batch_size, accelerator
            ),
            "teacher_sps": lambda: teacher_alone(teacher_model, train, args.batch_size, device),
        }
        ways["plain_sps"]()  # warm-up: allocator, kernels, first-touch of the cache's pages
        best = {name: 0.0 for name in ways}
        for round_ in range(rounds):
            for name, way in ways.items():
                best[name] = max(best[name], way())
            print(
                f"round {round_ + 1}/{rounds}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in best.items()),
                flush=True,
            )

    plain, live, cached_sps, alone = (
        best[k] for k in ("plain_sps", "live_kd_sps", "cached_kd_sps", "teacher_sps")
    )
    predicted_live = 1 / (1 / plain + 1 / alone)
    ratios = {
        "cached_over_plain": cached_sps / plain,
        "live_over_plain": live / plain,
        "live_over_predicted": live / predicted_live,
    }
    command = "python bench/throughput.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Throughput: {args.teacher} → {args.student} on {args.dataset}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {args.threads} torch "
        f"thread(s), {_device_name(device)}, torch "
        f"{torch.__version__}; {len(train)} training samples, batch "
        f"{args.batch_size}, best of {rounds} interleaved rounds.",
        "",
        "| way | samples/s | vs plain loop |",
        "|---|---:|---:|",
        f"| (a) plain PyTorch loop, student alone | {plain:.1f} | 1.00 |",
        f"| (b) kdistill, live teacher | {live:.1f} | {live / plain:.2f} |",
        f"| (c) kdistill, cached teacher | {cached_sps:.1f} | {cached_sps / plain:.2f} |",
        f"| (d) teacher forward alone | {alone:.1f} | {alone / plain:.2f} |",
        "",
        f"(b) against the prediction 1/(1/a + 1/d) = {predicted_live:.1f} samples/s: "
        f"{ratios['live_over_predicted']:.2f} (target 0.90–1.10). (c)/(a) = "
        f"{ratios['cached_over_plain']:.2f} (target ≥ 0.90). "
        f"Building the cache (one teacher pass, float16) took {cache_seconds:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = ("throughput_quick" if args.quick else "throughput") + (
        "_cuda" if device.type == "cuda" else ""
    )
    earlier = RESULTS / f"{stem}.md"
    overhead = earlier.read_text().partition(OVERHEAD) if earlier.is_file() else ("", "", "")
    (RESULTS / f"{stem}.md").write_text(
        text + (f"\n{OVERHEAD}{overhead[2]}" if overhead[1] else "")
    )
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"command": command, **best, **ratios, "cache_seconds": cache_seconds}, indent=2)
    )
    print(json.dumps({k: round(v, 2) for k, v in best.items()}))


if __name__ == "__main__":
    main()
