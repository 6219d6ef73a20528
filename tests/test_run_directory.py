"""A user's files are sacred: kdistill deletes only what it made and can prove it made, never
a directory it did not make, and never a run another process holds. Each case runs the command
line and checks that every pre-existing file is byte-identical afterwards: in this process, or
the installed console script in a child where this process holds the run's lock.
"""

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import KDISTILL, TINY_RECIPE, call_cli, kdistill_cli, subprocess_env

from kdistill.errors import DiskFullError
from kdistill.io.manifest import MARKER
from kdistill.report import MetricsLog
from kdistill.run.rundir import foreign_files


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_refused(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished quick run, ``runs/precious``, with a warm teacher store."""
    root = tmp_path_factory.mktemp("project")
    result = call_cli("run", *TINY_RECIPE, "output.dir=runs", "name=precious", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.integration
def test_cache_dir_that_holds_other_files_is_refused_and_untouched(tmp_path):
    important = tmp_path / "important"
    important.mkdir()
    (important / "thesis.txt").write_text("four years of work")
    before = snapshot(tmp_path)
    result = call_cli(
        "run",
        *TINY_RECIPE,
        "teacher.cache=true",
        f"teacher.cache_dir={important}",
        f"output.dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert_refused(result, "teacher.cache_dir", str(important))
    assert snapshot(tmp_path) == before  # refused at preflight: no teacher trained, nothing written


@pytest.mark.integration
def test_cache_dir_empty_is_used_and_reused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first = call_cli(
        "run",
        *TINY_RECIPE,
        "teacher.cache=true",
        f"teacher.cache_dir={cache}",
        "output.dir=runs",
        "name=a",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert (cache / "meta.json").is_file() and (cache / ".kdistill-cache").is_file()
    second = call_cli(
        "run",
        *TINY_RECIPE,
        "teacher.cache=true",
        f"teacher.cache_dir={cache}",
        "output.dir=runs",
        "name=b",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr


@pytest.mark.integration
def test_overwrite_with_a_bad_setting_keeps_the_finished_run(finished):
    before = snapshot(finished)
    result = call_cli(
        "run",
        *TINY_RECIPE,
        "output.dir=runs",
        "name=precious",
        "--overwrite",
        "student.kwargs.bogus=1",
        cwd=finished,
    )
    assert_refused(result, "student.kwargs", "bogus")
    assert snapshot(finished) == before


@pytest.mark.integration
def test_overwrite_never_replaces_a_directory_kdistill_did_not_make(tmp_path):
    app = tmp_path / "proj" / "myapp"
    (app / "src").mkdir(parents=True)
    (app / "config.yaml").write_text("database: prod\n")
    (app / "src" / "main.py").write_text("print('hello')\n")
    before = snapshot(tmp_path)
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=proj", "name=myapp", "--overwrite", cwd=tmp_path
    )
    assert_refused(result, "not made by kdistill")
    assert snapshot(tmp_path) == before


@pytest.fixture
def project(finished, tmp_path):
    """A copy of the finished project, for a test that changes it."""
    import shutil

    shutil.copytree(finished, tmp_path / "copy")
    return tmp_path / "copy"


@pytest.mark.integration
def test_overwrite_keeps_a_run_that_holds_a_file_of_the_users(project):
    (project / "runs" / "precious" / "notes.md").write_text("what I learned\n")
    before = snapshot(project)
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=precious", "--overwrite", cwd=project
    )
    assert_refused(result, "notes.md")
    assert snapshot(project) == before


@pytest.mark.integration
@pytest.mark.parametrize(
    "user_file",
    [
        "export/deploy/serve.py",
        "checkpoints/student_keep_v1.safetensors",
        "plots/deep/figure.png",
        "report.md",
    ],
)
def test_overwrite_deletes_only_the_files_the_run_listed(project, user_file):
    """Issue 27.1: a file at a path that looks like a run's (or a run file edited since) is the
    user's: the overwrite names it, exit 2, and not a file goes."""
    path = project / "runs" / "precious" / user_file
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("the user's own\n")
    before = snapshot(project)
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=precious", "--overwrite", cwd=project
    )
    assert_refused(result, user_file)
    assert snapshot(project) == before


@pytest.mark.integration
def test_a_users_checkpoint_of_the_same_size_is_not_taken_for_the_runs(project):
    """A fine-tuned student saved over the run's own (the same architecture, so the same size)
    is the user's now: the list holds when the run wrote its file, not only its size."""
    path = project / "runs" / "precious" / "checkpoints" / "student.safetensors"
    path.write_bytes(bytes(reversed(path.read_bytes())))
    before = snapshot(project)
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=precious", "--overwrite", cwd=project
    )
    assert_refused(result, "checkpoints/student.safetensors", "changed since")
    assert snapshot(project) == before


@pytest.mark.integration
def test_the_console_script_keeps_a_users_file_under_overwrite(project):
    """Issue 27.1 as a user meets it: the installed script, exit 2, one line, nothing deleted."""
    (project / "runs" / "precious" / "export" / "deploy").mkdir(parents=True)
    (project / "runs" / "precious" / "export" / "deploy" / "serve.py").write_text("print('mine')\n")
    before = snapshot(project)
    result = kdistill_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=precious", "--overwrite", cwd=project
    )
    assert_refused(result, "export/deploy/serve.py")
    assert snapshot(project) == before


@pytest.mark.integration
def test_a_planted_marker_without_the_runs_list_is_refused(tmp_path):
    """A folder that has a marker but no list of a run's files (copied by hand, or from a
    kdistill before the list) is not emptied, whatever its files are called."""
    folder = tmp_path / "runs" / "mine"
    for relative in (
        ".kdistill-run",
        "checkpoints/model.safetensors",
        "plots/a.png",
        "export/student.onnx",
        "tensorboard/events",
        "summary.json",
    ):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("mine\n")
    before = snapshot(tmp_path)
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=mine", "--overwrite", cwd=tmp_path
    )
    assert_refused(result, ".kdistill-files")
    assert snapshot(tmp_path) == before


@pytest.mark.integration
def test_overwrite_replaces_a_finished_kdistill_run(project):
    old_marker = (project / "runs" / "precious" / ".kdistill-run").read_text()
    result = call_cli(
        "run", *TINY_RECIPE, "output.dir=runs", "name=precious", "--overwrite", cwd=project
    )
    assert result.returncode == 0, result.stderr
    assert (project / "runs" / "precious" / "summary.json").is_file()
    assert (project / "runs" / "precious" / ".kdistill-run").read_text() != old_marker  # a new run


@pytest.mark.integration
def test_a_second_writer_is_refused_while_a_run_holds_the_lock(tmp_path):
    env = subprocess_env()
    # Long enough to be caught mid-run: a teacher of 400 epochs on digits (killed once checked).
    slow = [
        *TINY_RECIPE[:4],
        "teacher.epochs=400",
        "train.epochs=1",
        "teacher.augment=none",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
        "output.dir=runs",
        "name=live",
    ]
    first = subprocess.Popen(
        [str(KDISTILL), "run", *slow],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = tmp_path / "runs" / "live" / ".kdistill-lock"
        deadline = time.time() + 60
        while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
            time.sleep(0.2)
        assert lock.is_file(), "the first run never started"
        second = call_cli("run", *slow, "--overwrite", cwd=tmp_path)  # the holder is the child
        assert_refused(second, "in use by PID", str(first.pid))
        resumed = call_cli("run", *slow, "--resume", cwd=tmp_path)
        assert_refused(resumed, "in use by PID")
        assert first.poll() is None  # the first run goes on untouched
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize(
    "command",
    [
        ["export", "runs/precious", "--no-int8"],
        ["report", "runs/precious"],
        ["predict", "runs/precious/export", "digit.png"],
    ],
)
def test_export_report_and_predict_wait_for_the_runs_lock(finished, command):
    """Issue 27.12: while a run (here this test) holds the lock, a command that reads or rewrites
    the run's files is refused in one line naming the holder, and touches nothing."""
    from kdistill.run.rundir import RunLock

    lock = RunLock(finished / "runs" / "precious").acquire()
    try:
        before = snapshot(finished)
        assert_refused(kdistill_cli(*command, cwd=finished), "in use by PID", str(os.getpid()))
        assert snapshot(finished) == before
    finally:
        lock.release()


@pytest.mark.integration
def test_a_run_that_fails_before_any_phase_finished_leaves_nothing_in_the_way(
    tmp_path, monkeypatch
):
    """Failure after the directory was made (here the teacher's loss diverges): the directory
    goes, and the same command runs again without --overwrite."""
    diverging = call_cli(
        "run",
        *TINY_RECIPE,
        "teacher.lr=1e30",
        "teacher.optimizer=sgd",
        "output.dir=runs",
        "name=again",
        cwd=tmp_path,
    )
    assert diverging.returncode == 2, diverging.stderr
    assert "Traceback" not in diverging.stderr
    assert not (tmp_path / "runs" / "again").exists()
    rerun = call_cli("run", *TINY_RECIPE, "output.dir=runs", "name=again", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr


@pytest.mark.integration
def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    result = call_cli("run", *TINY_RECIPE, "output.dir=runs", cwd=tmp_path)
    assert_refused(result, "output.dir")
    assert (tmp_path / "runs").read_text() == "not a folder"


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders; the check is for ordinary users"
)
def test_output_dir_not_writable_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = call_cli("run", *TINY_RECIPE, f"output.dir={locked}", cwd=tmp_path)
    assert_refused(result, "not writable")


def test_a_full_disk_while_resume_rewrites_the_metrics_log_leaves_nothing_unlisted(
    tmp_path, monkeypatch
):
    """--resume drops the resumed phase's records by rewriting metrics.jsonl. A full disk then
    keeps the log whole, says so in one line, and leaves no temporary file the run's list
    (.kdistill-files) does not hold, which would make --overwrite refuse the run."""
    (tmp_path / MARKER).write_text("{}")
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in (1, 2):
        log.write({"phase": "student", "epoch": epoch})
    before = log.path.read_bytes()

    def full(self, data, *args, **kwargs):  # the file is created, then there is no space
        self.open("wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", full)
        patch.setattr(Path, "write_bytes", full)
        with pytest.raises(DiskFullError, match="metrics.jsonl"):
            log.drop_from("student", 2)
    assert log.path.read_bytes() == before
    assert foreign_files(tmp_path) == []
