"""A full disk: the teacher cache's files get their blocks before a row is written (a sparse
memory map on a full disk dies of SIGBUS, silently), and a checkpoint, cache or plot that does
not fit ends the command with one line naming the disk and what was kept; the last complete
checkpoint stays intact and the run resumes to bit-identical weights.

Real full disks are small tmpfs mounts (mounting needs root); where that is not allowed, the
in-process tests raise ENOSPC where the write would fail."""

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import call_cli, subprocess_env
from safetensors import SafetensorError
from test_hardening import assert_user_error

from kdistill.data.base import ArrayDataset
from kdistill.distiller import Teacher
from kdistill.errors import DiskFullError
from kdistill.io.tensors import load_tensors, read_meta, save_tensors
from kdistill.teachers.cache import build_cache

# Digits with a 1024-wide MLP teacher: its training state (weights and two Adam moments) is
# ~0.9 MB, so a 1.5 MB disk holds one state file but not the next one written beside it.
RUN = [
    "data.dataset=digits",
    "teacher.model=mlp",
    "teacher.kwargs={width: 1024}",
    "teacher.augment=none",
    "teacher.cache=false",
    "student.kwargs={width: 16}",
    "teacher.epochs=2",
    "train.epochs=1",
    "train.deterministic=true",
    "output.latency=false",
    "output.progress=false",
]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own at ``tmp_path/disk``; ``small_disk(size)`` mounts or resizes it."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def mount(size: str):
        options = f"size={size}" + (",remount" if mounted else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            refused = result.stderr.strip()
            pytest.skip(f"a real full disk needs a tmpfs mount, refused here: {refused}")
        mounted.append(size)
        return where

    try:
        yield mount
    finally:
        if mounted:
            subprocess.run(["umount", str(where)], check=True)


def test_cache_files_get_their_blocks_before_a_row_is_written(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    data = ArrayDataset(torch.randn(40, 6), torch.arange(40) % 3)
    teacher = Teacher(torch.nn.Linear(6, 3))
    with pytest.raises(DiskFullError, match=r"cache: the disk mounted at /\S* is full .*480 bytes"):
        build_cache(tmp_path / "cache", teacher, data, fingerprint={}, dtype="float32")
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-made is left behind


@pytest.mark.integration
def test_a_disk_that_fills_during_the_cache_build_is_one_error_not_sigbus(small_disk):
    """Another writer takes the disk between the space check and the build: the memory-mapped
    rows used to find no blocks, and the process died of SIGBUS with nothing on stderr."""
    disk = small_disk("4m")
    script = textwrap.dedent(f"""
        import sys, torch
        import kdistill.teachers.cache as cache
        from kdistill.data.base import ArrayDataset
        from kdistill.distiller import Teacher
        from kdistill.errors import DiskFullError

        check = cache.check_space
        def then_another_writer(root, needed):  # leaves 256 kB: room for files, not for rows
            check(root, needed)
            with open("{disk}/other-writer", "wb", buffering=0) as other:
                try:
                    while True:
                        other.write(bytes(65536))
                except OSError:
                    other.truncate(other.tell() - 262144)
        cache.check_space = then_another_writer
        data = ArrayDataset(torch.randn(4000, 6), torch.arange(4000) % 3)
        try:  # 4000 x 100 float32 logits: 1.6 MB
            cache.build_cache("{disk}/cache", Teacher(torch.nn.Linear(6, 100)), data,
                              fingerprint={{}}, dtype="float32")
        except DiskFullError as error:
            sys.exit(f"error: {{error}}")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert f"the disk mounted at {disk} is full" in result.stderr
    assert "1.6 MB needed" in result.stderr
    assert not list((disk / "cache").glob("*.npy"))


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "teacher.state.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"epoch": 1})

    def full(*args, **kwargs):  # what safetensors raises on a full disk
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    kept = "is full .*12 bytes needed.*kept: the previous teacher.state.safetensors, intact"
    with pytest.raises(DiskFullError, match=kept):
        save_tensors(path, {"w": torch.zeros(3)}, {"epoch": 2})
    tensors, meta = load_tensors(path, expect_digest=True)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.integration
def test_a_run_on_a_full_disk_stops_in_one_line_and_resumes_bit_identical(tmp_path, small_disk):
    full = call_cli("run", *RUN, f"output.dir={tmp_path / 'roomy'}", "name=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    disk = small_disk("1500k")
    stopped = call_cli("run", *RUN, f"output.dir={disk}", "name=full", cwd=tmp_path)
    line = assert_user_error(
        stopped,
        f"the disk mounted at {disk} is full",
        "--resume",
        "kept: the previous teacher.state.safetensors, intact",
    )
    assert "teacher (its last training checkpoint)" in line
    state = disk / "full" / "checkpoints" / "teacher.state.safetensors"
    # Epoch 1 finished and saved (the state records the next epoch); epoch 2's did not fit.
    assert read_meta(state)["progress"]["epoch"] == 2

    small_disk("64m")  # space freed
    resumed = call_cli("run", *RUN, f"output.dir={disk}", "name=full", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for phase in ("teacher", "scratch", "student"):
        a, _ = load_tensors(tmp_path / "roomy" / "full" / "checkpoints" / f"{phase}.safetensors")
        b, _ = load_tensors(disk / "full" / "checkpoints" / f"{phase}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{phase} weights differ after resume"


@pytest.mark.integration
def test_plots_on_a_full_disk_end_in_one_line(tmp_path, monkeypatch):
    """The PNG writer finds the disk full (simulated: matplotlib's writer raises ENOSPC)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", full)
    result = call_cli(
        "run", *RUN, "teacher.epochs=1", f"output.dir={tmp_path}", "name=plots", cwd=tmp_path
    )
    line = assert_user_error(result, "is full", "--resume")
    assert all(f"{phase} (finished)" in line for phase in ("teacher", "scratch", "student"))
    assert not list((tmp_path / "plots" / "plots").glob("*.png"))


def test_what_a_stopped_run_keeps_is_named_by_phase(tmp_path):
    from kdistill.run.pipeline import kept_by_run

    gone = tmp_path / "gone"
    assert kept_by_run(gone) == f"{gone} had finished no phase and was removed: run it again"
    (tmp_path / "checkpoints").mkdir()
    for name in ("teacher", "student.state", "student.state.best"):  # keep=best's copy is no phase
        (tmp_path / "checkpoints" / f"{name}.safetensors").write_bytes(b"")
    assert kept_by_run(tmp_path) == (
        f"{tmp_path} keeps teacher (finished), student (its last training checkpoint): "
        "continue it with --resume"
    )
