"""Teacher caches built by several processes: on one machine, on two "machines" sharing a
filesystem, and on two machines with their own disks (simulated: each node's process gets its
own directory), every copy equals the cache one process builds."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env

from kdistill.data.base import ArrayDataset
from kdistill.distiller import Teacher
from kdistill.teachers.cache import build_cache

WORKER = Path(__file__).parent / "helpers" / "cache_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def reference(tmp_path, topk: int | None = None) -> Path:
    """The cache one process builds, as the worker does: the same data and teacher."""
    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(37, 6), torch.arange(37) % 3)
    build_cache(
        tmp_path / "one",
        Teacher(torch.nn.Linear(6, 3)),
        data,
        fingerprint={"test": 1},
        dtype="float32",
        batch_size=8,
        topk=topk,
    )
    return tmp_path / "one"


def one_machine(tmp_path, *worker_args: str, port: int) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), str(WORKER)]
    return subprocess.run(
        [*command, str(tmp_path), *worker_args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def two_nodes(tmp_path, layout: str, port: int):
    """Two torchrun "machines" of one process each (LOCAL_WORLD_SIZE=1), started side by side."""
    procs = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(WORKER),
                str(tmp_path),
                layout,
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]


@pytest.mark.integration
def test_machines_with_their_own_disks_each_get_a_complete_cache(tmp_path):
    two_nodes(tmp_path, "local", 29541)
    expected = np.load(reference(tmp_path) / "logits.npy")
    for node in ("node0", "node1"):
        assert np.array_equal(
            np.load(tmp_path / node / "logits.npy"), expected
        )  # rank 1 could not open rank 0's files before
        assert (tmp_path / node / "meta.json").is_file()
        assert not (tmp_path / node / ".kdistill-cache-main").exists()


@pytest.mark.integration
@pytest.mark.parametrize("launch", ["two machines", "one machine"])
def test_processes_sharing_a_directory_fill_one_cache(tmp_path, launch):
    if launch == "two machines":
        two_nodes(tmp_path, "shared", 29543)
    else:
        result = one_machine(tmp_path, "shared", port=29545)
        assert result.returncode == 0, result.stderr[-2000:]
    expected = np.load(reference(tmp_path) / "logits.npy")
    assert np.array_equal(np.load(tmp_path / "shared" / "logits.npy"), expected)
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        ".kdistill-cache",
        "logits.npy",
        "meta.json",
    ]


@pytest.mark.integration
def test_processes_on_one_machine_fill_one_top_k_cache(tmp_path):
    result = one_machine(tmp_path, "shared", "2", port=29547)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = reference(tmp_path, topk=2)
    for name in ("topk.log_probs", "topk.index", "topk.tail"):
        built = np.load(tmp_path / "shared" / f"{name}.npy")
        assert np.array_equal(built, np.load(expected / f"{name}.npy"))


@pytest.mark.integration
def test_processes_that_would_build_different_caches_are_refused(tmp_path):
    """Each rank names its own directory on one machine (as two temporary directories would):
    refused by every rank at once, where rank 1 used to open files rank 0 never made."""
    result = one_machine(tmp_path, "local", port=29549)
    assert result.returncode != 0
    assert "process(es) [1] would build another cache than process 0" in result.stderr
    assert not (tmp_path / "node1").exists()
