"""Exercise kdistill's GPU paths in about 6 minutes on one GPU and write what it saw to
bench/results/gpu.md (and gpu.json). The test suite never needs a GPU; without CUDA this script
records that and exits 0.

    PYTHONPATH=src python3 bench/gpu_check.py

Each check runs in its own Python process under its own time limit, so a crash, a hang or a CUDA
error in one is recorded and the next still runs; the whole run stops starting checks when its
budget (``--budget``, 330 s) is spent. Checks, most important first:

- precision: no / bf16 / fp16, a feature term (nst) and relation terms (sp, rkd, pkt) inside the
  Distiller under the accelerator's autocast: finite and close to their float32 values; then a
  short fit in that precision.
- crd: CRD on the GPU (memory bank on the device, rows updated, loss finite); with two GPUs or
  more, DDP over all of them with the banks compared across ranks.
- recipe_<precision>: ``python -m kdistill run configs/digits.yaml`` on cuda, 2 + 2 epochs.
- deterministic: two identical fits in deterministic mode, weights compared bit for bit.
- cached_topk: the language-model recipe with the teacher's top-k cache, 1 + 1 epochs.
- throughput: ``bench/throughput.py --device cuda`` on digits, a small budget.
- recipe_deterministic: the recipe with ``train.deterministic=true``.
- compile: ``train.compile`` (Accelerate compiles the Distiller), kd + dkd with warm-up, 3 epochs.
- recipe_fsdp: the language-model recipe with ``train.strategy=fsdp`` in bf16 under torchrun,
  one rank per GPU (FSDP2 shards from two GPUs on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RESULT_MARK = "GPU_CHECK_RESULT "
# The checks' device: "cpu" only to smoke-test the checks themselves on a machine without a GPU.
DEVICE = os.environ.get("KDISTILL_GPU_CHECK_DEVICE", "cuda")
QUICK_RUN = [
    f"train.device={DEVICE}",
    "output.progress=false",
    "output.latency=false",
    "output.plots=false",
]


# --- checks, each run in a child process; each returns (ok, lines) ---------------------------


def _cnn_pair():
    import torch

    from kdistill import Teacher, create_model

    torch.manual_seed(0)
    shape = dict(num_classes=10, input_shape=(3, 32, 32))
    student, teacher = create_model("resnet8", **shape), create_model("resnet20", **shape)
    return student, teacher, Teacher


def _random_images(n: int, seed: int = 0):
    import torch

    from kdistill.data import ArrayDataset

    generator = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        torch.randn(n, 3, 32, 32, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )


def check_precision(work: Path):
    import torch
    from torch.utils.data import DataLoader

    from kdistill import Distiller, Term, fit
    from kdistill.training.acceleration import make_accelerator

    student, teacher_model, Teacher = _cnn_pair()
    s_layer, t_layer = student.hint_layers[-1], teacher_model.hint_layers[-1]
    terms = [
        Term("ce", "ce", teacher=None),
        Term("nst", "nst", weight=50.0, student=s_layer, teacher=t_layer),
        Term("sp", "sp", weight=3000.0, student=s_layer, teacher=t_layer),
        Term("rkd", "rkd", weight=1.0),
        Term("pkt", "pkt", weight=30000.0, student=s_layer, teacher=t_layer),
    ]
    teacher = Teacher(teacher_model, taps=[t_layer])
    distiller = Distiller(student, terms)
    data = _random_images(256)
    batch = next(iter(DataLoader(data, batch_size=64)))
    ok, lines, reference = True, [], None
    for precision in ("no", "bf16", "fp16") if DEVICE == "cuda" else ("no", "bf16"):
        accelerator = make_accelerator(DEVICE, precision)
        device = accelerator.device
        distiller.to(device).eval()
        teacher.to(device)
        on_device = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad(), accelerator.autocast():
            out = distiller(on_device, teacher(on_device))
        values = {
            k.removeprefix("loss/"): float(v) for k, v in out.items() if k.startswith("loss/")
        }
        reference = reference or values
        errors = {
            k: abs(v - reference[k]) / max(abs(reference[k]), 1e-12) for k, v in values.items()
        }
        finite = all(map(_finite, values.values()))
        # bf16 rounds the models' own activations (~3 digits): 10 % catches the loss math in
        # half precision (NaN, 17x, 110 % off were measured), not the models' rounding.
        close = all(e < 0.10 for e in errors.values())
        ok &= finite and close
        lines.append(
            f"{precision}: "
            + ", ".join(f"{k} {v:.5g} (rel. diff {errors[k]:.1e})" for k, v in values.items())
            + ("" if finite and close else "  <-- NOT finite / not close to fp32")
        )
        started = time.perf_counter()
        history = fit(
            Distiller(_cnn_pair()[0], terms),
            DataLoader(data, batch_size=64, shuffle=True),
            teacher=teacher,
            epochs=2,
            accelerator=accelerator,
            progress=False,
        )
        loss = history[-1]["loss"]
        ok &= _finite(loss)
        lines.append(
            f"{precision}: fit 2 epochs x 4 steps: final loss {loss:.4f} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    return ok, lines


def check_crd(work: Path):
    import torch
    from torch.utils.data import DataLoader

    from kdistill import Distiller, Term, fit
    from kdistill.training.acceleration import make_accelerator

    student, teacher_model, Teacher = _cnn_pair()
    teacher = Teacher(teacher_model, taps=[teacher_model.hint_layers[-1]])
    data = _random_images(256, seed=1)
    terms = [
        Term("ce", "ce", teacher=None),
        Term(
            "crd",
            "crd",
            weight=0.8,
            student=student.hint_layers[-1],
            teacher=teacher_model.hint_layers[-1],
        ),
    ]
    distiller = Distiller.build(
        student,
        terms,
        teacher=teacher,
        example_batch=next(iter(DataLoader(data, batch_size=8))),
        num_samples=len(data),
    )
    crd = distiller.loss_modules["crd"]
    before = crd.memory_student.clone()
    accelerator = make_accelerator(DEVICE, "bf16")
    history = fit(
        distiller,
        DataLoader(data, batch_size=32, shuffle=True),
        teacher=teacher,
        epochs=2,
        accelerator=accelerator,
        progress=False,
    )
    moved = (crd.memory_student.cpu() != before).any(dim=1).float().mean().item()
    ok = _finite(history[-1]["loss"]) and crd.memory_student.device.type == DEVICE and moved == 1.0
    lines = [
        f"bf16 fit, 2 epochs: loss {history[-1]['loss']:.4f}, bank on {crd.memory_student.device}, "
        f"{moved:.0%} of the bank's rows updated"
    ]
    gpus = torch.cuda.device_count() if DEVICE == "cuda" else 0
    if gpus < 2:
        lines.append(
            f"{gpus} GPU visible: CRD under DDP not exercised here (tested on 2 CPU processes)"
        )
        return ok, lines
    worker = ROOT / "tests" / "helpers" / "crd_ddp_worker.py"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    result = subprocess.run(
        [
            *launcher,
            "--nproc_per_node",
            str(gpus),
            "--master_port",
            "29561",
            str(worker),
            str(work),
            "cuda",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    if result.returncode != 0:
        return False, [*lines, f"DDP over {gpus} GPUs FAILED:", *result.stderr.splitlines()[-8:]]
    ranks = [json.loads((work / f"crd_rank{r}.json").read_text()) for r in range(gpus)]
    equal = all(
        r["memory_student"] == ranks[0]["memory_student"]
        and r["memory_teacher"] == ranks[0]["memory_teacher"]
        for r in ranks
    )
    initial, final = (
        torch.tensor(ranks[0]["initial_student"]),
        torch.tensor(ranks[0]["memory_student"]),
    )
    complete = bool((final != initial).any(dim=1).all())
    lines.append(
        f"DDP over {gpus} GPUs: banks equal across ranks "
        f"{equal}; every sample's row updated on rank 0 {complete}"
    )
    return ok and equal and complete, lines


def check_deterministic(work: Path):
    import warnings

    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from kdistill import Distiller, Term, fit
    from kdistill.training.acceleration import make_accelerator

    def train():
        set_seed(0)
        student, teacher_model, Teacher = _cnn_pair()
        terms = [
            Term("ce", "ce", teacher=None),
            Term("kd", "kd"),
            Term(
                "at",
                "at",
                weight=1000.0,
                student=student.hint_layers[-1],
                teacher=teacher_model.hint_layers[-1],
            ),
        ]
        loader = DataLoader(
            _random_images(256),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        fit(
            Distiller(student, terms),
            loader,
            teacher=Teacher(teacher_model, taps=[teacher_model.hint_layers[-1]]),
            epochs=2,
            accelerator=accelerator,
            progress=False,
        )
        return [p.detach().cpu().clone() for p in student.parameters()]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accelerator = make_accelerator(DEVICE, deterministic=True)
        first, second = train(), train()
    identical = all(torch.equal(a, b) for a, b in zip(first, second))
    nondeterministic = sorted(
        {
            str(w.message).split(" does not have")[0][:80]
            for w in caught
            if "deterministic" in str(w.message)
        }
    )
    lines = [
        f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}; two 2-epoch fits "
        f"(kd + at) bit-identical: {identical}",
        "ops without a deterministic CUDA kernel (warned): "
        + ("; ".join(nondeterministic) or "none"),
    ]
    return identical, lines


def check_compile(work: Path):
    """``train.compile`` as a run does it (``make_accelerator(compile=True)``: Accelerate compiles
    the Distiller with inductor), kd + dkd with DKD's warm-up over 3 epochs, bf16: finite loss,
    one compiled graph (the warm-up weight is a tensor, so epochs do not recompile), the time of
    the first epoch (compiling) and of the last."""
    import torch
    import torch._dynamo
    from torch.utils.data import DataLoader

    from kdistill import Distiller, Term
    from kdistill.training.acceleration import make_accelerator
    from kdistill.training.loop import train_loop

    student, teacher_model, Teacher = _cnn_pair()
    terms = [Term("ce", "ce", teacher=None), Term("kd", "kd"), Term("dkd", "dkd", warmup_epochs=3)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    history = train_loop(
        Distiller(student, terms),
        DataLoader(_random_images(8 * 64), batch_size=64, shuffle=True),
        teacher=Teacher(teacher_model),
        epochs=3,
        accelerator=make_accelerator(DEVICE, "bf16", compile=True),
        progress=False,
    )
    graphs = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
    loss = history[-1]["loss"]
    ok = _finite(loss) and graphs >= 1
    return ok, [
        "train.compile (inductor through Accelerate), kd "
        "+ dkd with warm-up, bf16: 3 epochs of 8 steps, epoch "
        f"1 {history[0]['seconds']:.1f} s (compiling), epoch 3 "
        f"{history[-1]['seconds']:.2f} s; {graphs} compiled graph(s); loss {loss:.4f}"
    ]


CHILD_CHECKS = {
    "precision": check_precision,
    "crd": check_crd,
    "deterministic": check_deterministic,
    "compile": check_compile,
}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# --- the parent: runs every check in a child process, under a time limit ---------------------


def _recipe(work: Path, name: str, recipe: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kdistill",
        "run",
        str(ROOT / "configs" / recipe),
        *QUICK_RUN,
        f"output.dir={work}",
        f"name={name}",
        *overrides,
    ]


def _summary_lines(work: Path, name: str) -> list[str]:
    path = work / name / "summary.json"
    if not path.is_file():
        return [f"no summary.json under {work / name}"]
    summary = json.loads(path.read_text())
    roles = [r for r in ("teacher", "scratch", "student") if isinstance(summary.get(r), dict)]
    scores = ", ".join(
        f"{r} "
        + " ".join(
            f"{k} {v:.4g}" for k, v in summary[r].items() if k in ("accuracy", "perplexity", "loss")
        )
        for r in roles
    )
    ranks = f"{summary.get('world_size', 1)} process(es), {summary.get('strategy', 'ddp')}"
    return [f"device {summary.get('device', '?')}, {ranks}; {scores}"]


def plan(work: Path) -> list[tuple[str, int, list[str] | None]]:
    """(name, time limit in s, command or None for a child check), most important first."""
    digits = "digits.yaml"
    epochs = ["train.epochs=2", "teacher.epochs=2"]
    return [
        ("precision", 90, None),
        ("crd", 60, None),
        (
            "recipe_bf16",
            75,
            _recipe(work, "gpu_bf16", digits, *epochs, "train.mixed_precision=bf16"),
        ),
        (
            "recipe_fp16",
            75,
            _recipe(work, "gpu_fp16", digits, *epochs, "train.mixed_precision=fp16"),
        ),
        ("deterministic", 60, None),
        (
            "cached_topk",
            120,
            _recipe(
                work,
                "gpu_topk",
                "lm_kd.yaml",
                "train.epochs=1",
                "teacher.epochs=1",
                "teacher.cache=true",
                "teacher.cache_topk=8",
            ),
        ),
        (
            "throughput",
            90,
            [
                sys.executable,
                str(ROOT / "bench" / "throughput.py"),
                "--device",
                DEVICE,
                "--dataset",
                "digits",
                "--subset",
                "1797",
                "--rounds",
                "2",
            ],
        ),
        ("recipe_no", 75, _recipe(work, "gpu_no", digits, *epochs)),
        (
            "recipe_deterministic",
            75,
            _recipe(work, "gpu_det", digits, *epochs, "train.deterministic=true"),
        ),
        ("compile", 120, None),
        (
            "recipe_fsdp",
            150,
            _fsdp_launch()
            + _recipe(
                work,
                "gpu_fsdp",
                "lm_kd.yaml",
                "train.epochs=1",
                "teacher.epochs=1",
                "train.strategy=fsdp",
                "train.mixed_precision=bf16",
            )[1:],
        ),
    ]


def _fsdp_launch() -> list[str]:
    """torchrun over every GPU here, in place of ``python``: one rank on one GPU (Accelerate
    then runs it unsharded; the summary's strategy says which), two or more where present."""
    import torch

    gpus = max(torch.cuda.device_count(), 1)
    return [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(gpus)]


def run_check(name: str, limit: int, command: list[str] | None, work: Path) -> dict:
    command = command or [
        sys.executable,
        str(Path(__file__).resolve()),
        "--check",
        name,
        "--work",
        str(work),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stderr or b"")[-1500:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {
            "name": name,
            "status": "TIMEOUT",
            "seconds": limit,
            "lines": [f"stopped after {limit} s"],
            "tail": tail.splitlines()[-6:],
        }
    seconds = time.perf_counter() - started
    lines, ok = [], result.returncode == 0
    marked = [l for l in result.stdout.splitlines() if l.startswith(RESULT_MARK)]
    if marked:
        reported = json.loads(marked[-1][len(RESULT_MARK) :])
        ok, lines = ok and reported["ok"], reported["lines"]
    elif ok and name.startswith(("recipe", "cached")):
        lines = _summary_lines(work, _run_name(command))
    elif ok and name == "throughput":
        lines = [l for l in result.stdout.splitlines() if l.startswith(("|", "(b)", "Machine"))]
    tail = [] if ok else (result.stderr or result.stdout).splitlines()[-8:]
    return {
        "name": name,
        "status": "ok" if ok else "FAILED",
        "seconds": round(seconds, 1),
        "lines": lines,
        "tail": tail,
    }


def _run_name(command: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in command if a.startswith("name="))


def environment() -> tuple[bool, list[str]]:
    import torch

    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA available: {torch.cuda.is_available()}"
    ]
    for package in ("accelerate", "transformers", "onnxruntime"):
        try:
            lines[0] += f", {package} {__import__(package).__version__}"
        except Exception:  # noqa: BLE001 (only reported)
            lines[0] += f", {package} missing"
    if DEVICE == "cpu":
        lines.append(
            "KDISTILL_GPU_CHECK_DEVICE=cpu: the checks themselves, smoke-tested on the CPU"
        )
        return True, lines
    if not torch.cuda.is_available():
        return False, lines
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        lines.append(
            f"GPU {index}: {props.name}, {props.total_memory / 2**30:.0f} "
            f"GiB, capability {props.major}.{props.minor}"
        )
    lines.append(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    return True, lines


def write_report(out: Path, started: float, env_lines: list[str], results: list[dict]) -> str:
    text = [
        "# GPU check",
        "",
        "Command: `PYTHONPATH=src python3 bench/gpu_check.py`, "
        f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {platform.machine()}, "
        f"{time.perf_counter() - started:.0f} s in all.",
        "",
        *(f"- {line}" for line in env_lines),
        "",
    ]
    if results:
        text += ["| check | status | seconds |", "|---|---|---:|"]
        text += [f"| {r['name']} | {r['status']} | {r['seconds']} |" for r in results]
        for r in results:
            text += ["", f"## {r['name']}: {r['status']}", ""]
            text += [f"- {line}" for line in r["lines"]]
            if r["tail"]:
                text += ["", "```", *r["tail"], "```"]
    out.mkdir(parents=True, exist_ok=True)
    report = "\n".join(text) + "\n"
    (out / "gpu.md").write_text(report)
    (out / "gpu.json").write_text(
        json.dumps({"environment": env_lines, "checks": results}, indent=2)
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", choices=sorted(CHILD_CHECKS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=330, help="seconds; no check starts after it")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where gpu.md and gpu.json go")
    args = parser.parse_args()
    if args.check:  # a child: one check, its verdict on the last line
        try:
            ok, lines = CHILD_CHECKS[args.check](args.work)
        except Exception as error:  # noqa: BLE001 (recorded, and the parent goes on)
            traceback.print_exc()
            ok, lines = (
                False,
                [
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[
                        :300
                    ]
                ],
            )
        print(RESULT_MARK + json.dumps({"ok": bool(ok), "lines": lines}), flush=True)
        return 0
    started = time.perf_counter()
    has_gpu, env_lines = environment()
    print("\n".join(env_lines), flush=True)
    if not has_gpu:
        env_lines.append("no CUDA GPU here: nothing else checked")
        print(write_report(args.out, started, env_lines, []))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="kdistill-gpu-") as tmp:
        for name, limit, command in plan(Path(tmp)):
            if args.only and name not in args.only:
                continue
            left = args.budget - (time.perf_counter() - started)
            if left < 20:
                results.append(
                    {
                        "name": name,
                        "status": "skipped",
                        "seconds": 0,
                        "lines": ["out of time"],
                        "tail": [],
                    }
                )
                continue
            print(
                f"[{time.perf_counter() - started:5.0f} s] "
                f"{name} (limit {min(limit, int(left))} s) ...",
                flush=True,
            )
            work = Path(tmp) / name
            work.mkdir()
            if command is not None:
                command = [a.replace(f"output.dir={tmp}", f"output.dir={work}") for a in command]
            result = run_check(name, min(limit, int(left)), command, work)
            results.append(result)
            print(
                f"        {result['status']} in {result['seconds']} s: "
                + " | ".join(result["lines"])[:400],
                flush=True,
            )
            for line in result["tail"]:
                print(f"        {line}", flush=True)
            write_report(args.out, started, env_lines, results)  # a partial report survives a kill
    print(write_report(args.out, started, env_lines, results))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
