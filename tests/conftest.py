"""Test settings: offline, few threads (2 shared cores), reference vectors at hand."""

import json
import os
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


@pytest.fixture(scope="session")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="session")
def cases(reference):
    return {case["id"]: case for case in reference["cases"]}


def subprocess_env() -> dict:
    """Environment for child processes: the same offline, few-thread settings."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
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
