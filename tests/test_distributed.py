"""Data-parallel training through Accelerate on two CPU processes (gloo): every rank ends with
the same parameters, and the result matches one process with the same global batch."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Tolerances: the same arithmetic summed in another order (gradients all-reduced over two ranks
# instead of summed in one batch) drifts by float32 rounding over ~60 Adam steps.
WEIGHT_ATOL = 1e-6  # measured: 6e-8
ACCURACY_TOL = 0.01


def free_port() -> str:
    """A port the OS has free now, for torchrun's rendezvous: fixed ports meet when two runs of
    the suite (or two tests) overlap."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = subprocess_env()
    two = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            str(WORKER),
            str(out),
            "16",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run(
        [sys.executable, str(WORKER), str(out), "32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    return {p.stem: json.loads(p.read_text()) for p in out.glob("rank*.json")}


@pytest.mark.integration
def test_two_processes_end_with_identical_parameters(runs):
    rank0, rank1 = runs["rank0_of_2"], runs["rank1_of_2"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["digest"] == rank1["digest"]


@pytest.mark.integration
def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    one, two = runs["rank0_of_1"], runs["rank0_of_2"]
    for a, b in zip(one["weights"], two["weights"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=WEIGHT_ATOL, rtol=0)
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= ACCURACY_TOL
    assert (
        abs(one["val_accuracy"] - two["val_accuracy"]) <= ACCURACY_TOL
    )  # gathered without duplicates


@pytest.mark.integration
def test_accumulation_over_two_processes_matches_one_process_with_the_window_as_batch(tmp_path):
    """Each process weighs its own window (the last one short) and DDP averages the two."""
    worker, env = WORKER.with_name("accumulation_worker.py"), subprocess_env()
    two = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            str(worker),
            str(tmp_path),
            "8",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run(
        [sys.executable, str(worker), str(tmp_path), "32", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    weights = {p.stem: torch.tensor(json.loads(p.read_text())) for p in tmp_path.glob("rank*.json")}
    assert torch.equal(weights["rank0_of_2"], weights["rank1_of_2"])
    two_processes, one_process = weights["rank0_of_2"], weights["rank0_of_1"]
    torch.testing.assert_close(two_processes, one_process, atol=WEIGHT_ATOL, rtol=0)


@pytest.mark.integration
def test_kdistill_run_under_torchrun(tmp_path):
    """The command line itself, data-parallel: world size logged, files written once."""
    result = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            "-m",
            "kdistill",
            "run",
            "data.dataset=digits",
            "teacher.model=mlp",
            "teacher.kwargs={width: 64}",
            "teacher.augment=none",
            "student.kwargs={width: 16}",
            "teacher.epochs=1",
            "train.epochs=1",
            "output.latency=false",
            "output.plots=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
            "name=ddp",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "world_size=2" in result.stdout
    assert result.stdout.count("Run written to") == 1  # only the main process reports
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    records = [json.loads(l) for l in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [
        ("teacher", 1),
        ("scratch", 1),
        ("student", 1),
    ]


@pytest.mark.integration
def test_builtin_recipe_caches_its_teacher_under_torchrun(tmp_path):
    """The built-in recipe (a BatchNorm teacher, cached): every rank must fill and then reuse
    the one cache rank 0 makes. DDP left each rank its own BatchNorm statistics, so each rank
    looked for the cache of its own teacher and rank 1 opened files nobody made."""

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(TORCHRUN),
                "--nproc_per_node",
                "2",
                "--master_port",
                free_port(),
                "-m",
                "kdistill",
                "run",
                "data.subset=300",
                "teacher.epochs=1",
                "train.epochs=1",
                "train.views=1",
                "output.latency=false",
                "output.plots=false",
                "output.progress=false",
                f"output.dir={tmp_path}",
                f"name={name}",
            ],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    for name in ("built", "reused"):  # the second run opens the cache on every rank and probes it
        result = run(name)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((tmp_path / name / "summary.json").read_text())["world_size"] == 2
    caches = list((tmp_path / ".cache").iterdir())
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()


@pytest.mark.integration
def test_distill_with_a_temporary_cache_under_torchrun():
    """``distill(cache=True)`` made one temporary directory per process: every rank but the
    first waited for files in a directory nobody filled."""
    worker = Path(__file__).parent / "helpers" / "api_cache_worker.py"
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", free_port(), str(worker)]
    result = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("trained 1 epoch(s)") == 2


def test_seeds_under_torchrun(tmp_path):
    """`--seeds` data-parallel: every rank checks the directories before rank 0 makes the
    summary's (else rank 1 found it made and refused), and only rank 0 writes and reports."""
    result = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            "-m",
            "kdistill",
            "run",
            "data.dataset=digits",
            "data.subset=200",
            "teacher.model=mlp",
            "teacher.augment=none",
            "student.model=mlp_tiny",
            "teacher.epochs=1",
            "train.epochs=1",
            "output.latency=false",
            "output.plots=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
            "name=ddp",
            "--seeds",
            "2",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Seeds summary written to") == 1
    assert json.loads((tmp_path / "ddp" / "seeds.json").read_text())["seeds"] == [0, 1]
    for seed in (0, 1):
        assert (
            json.loads((tmp_path / f"ddp-seed{seed}" / "summary.json").read_text())["world_size"]
            == 2
        )


@pytest.mark.parametrize(
    "argv, code",
    [(["--version"], 0), (["run", "--no-such-option"], 2)],  # outcomes every rank reaches alike
)
def test_the_cli_destroys_the_process_group_it_ran_in(tmp_path, argv, code):
    """A launched process leaves its process group to interpreter exit no more: Gloo's threads
    torn down there abort a finished run with SIGABRT (seen under load in CI). One process,
    one rank, a file store: the group the console script would have joined under torchrun."""
    import torch.distributed as dist

    from kdistill.cli import main

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(argv) == code
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
