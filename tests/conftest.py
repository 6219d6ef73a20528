"""Test settings: offline, few threads (2 shared cores), reference vectors at hand, and the shared
ways to run kdistill: the tiny recipe, the CLI in this process, the console script in a child."""

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Busy-waiting OpenMP threads slow everything 2-100x when another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# Reference loss values and gradients computed by RepDistiller, mdistiller and torchdistill
# (semantics in tests/data/REFERENCE.md), copied so a bare checkout can run the golden tests.
REFERENCE = ROOT / "tests" / "data" / "kd_reference_vectors.json"
SRC = ROOT / "src"
KDISTILL = Path(sys.executable).with_name("kdistill")
# The quickest whole run: digits, small MLPs, one epoch each, no augmentation, no latency, plots or
# progress bars. Tests add their own overrides after it (the later override wins).
TINY_RECIPE = (
    "data.dataset=digits",
    "teacher.model=mlp",
    "teacher.kwargs={width: 32}",
    "student.kwargs={width: 16}",
    "teacher.epochs=1",
    "train.epochs=1",
    "teacher.augment=none",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
)


@pytest.fixture(scope="session")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="session")
def cases(reference):
    return {case["id"]: case for case in reference["cases"]}


def subprocess_env() -> dict:
    """Environment for child processes: the same offline, few-thread settings."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"
    )
    # A child killed by a signal (SIGABRT from C++, SIGSEGV) prints where each thread was.
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def check_low_precision(loss_fn, s, t):
    """``loss_fn`` on large low-precision inputs (``s`` requires grad): computed in float32, finite
    with a finite gradient, and within 1e-3 of the same loss in float64."""
    value = loss_fn(s, t)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    reference = loss_fn(s.detach().double(), t.double())
    assert value.item() == pytest.approx(reference.item(), rel=1e-3)


@pytest.fixture
def tiny_recipe() -> list[str]:
    """The overrides of the quickest whole run (``TINY_RECIPE``), a fresh list for each test."""
    return list(TINY_RECIPE)


def call_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``kdistill ARGS`` in this process (no 2-3 s interpreter and torch start): its exit code,
    stdout and stderr, run in ``cwd``. A bug raises here instead of printing a traceback."""
    from kdistill.cli import main

    out, err = io.StringIO(), io.StringIO()
    # train.deterministic switches PyTorch's kernels for the whole process: keep it to this call.
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with (
            contextlib.chdir(cwd or Path.cwd()),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main([str(arg) for arg in args])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return subprocess.CompletedProcess(
        ["kdistill", *map(str, args)], code, out.getvalue(), err.getvalue()
    )


@pytest.fixture
def cli():
    """``cli("run", *overrides, cwd=tmp_path)``: the command line in this process (``call_cli``).
    Use the console script (``kdistill_cli``) where the process is the point: exit codes of the
    installed script, signals, locks, memory caps, torchrun."""
    return call_cli


MEMORY_CAP = (
    2 * 2**30
)  # address space of a child: a bomb that expands hits it instead of the machine


def kdistill_cli(
    *args, cwd: Path, memory: int | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The installed console script in a child process, this checkout's sources first on its path;
    ``memory`` caps the child's address space (bytes)."""
    env = {**subprocess_env(), **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [str(KDISTILL), *map(str, args)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=cap_memory if memory else None,
        timeout=timeout,
    )
