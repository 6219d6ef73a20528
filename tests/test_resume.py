"""Crash-safe runs: a run killed with SIGKILL mid-epoch resumes to bit-identical weights;
checkpoints are atomic, checksummed, and never unpickled."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import call_cli, subprocess_env
from torch.utils.data import DataLoader

from kdistill.cli import main
from kdistill.distiller import Distiller, Teacher
from kdistill.io.tensors import CheckpointError, load_tensors, read_meta, save_tensors
from kdistill.io.weights import load_weights, save_weights
from kdistill.methods import preset_terms
from kdistill.models import create_model
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Checkpointing, Loop, train_loop
from kdistill.training.sampling import OnPolicy

RECIPE = [
    "data.subset=1000",
    "teacher.epochs=1",
    "train.epochs=3",
    "train.batch_size=16",
    "train.checkpoint_every=4",
    "train.deterministic=true",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def run_args(*args):
    return ["run", *RECIPE, *args]


def kdistill(*args, cwd):
    return [sys.executable, "-m", "kdistill", *run_args(*args)]


@pytest.mark.integration
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    env = subprocess_env()
    # Only the killed run needs a process of its own; the others run here (bit-identical either
    # way).
    full = call_cli(*run_args("name=full", f"output.dir={tmp_path}"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    run_dir = tmp_path / "killed"
    state = run_dir / "checkpoints" / "student.state.safetensors"
    proc = subprocess.Popen(
        kdistill("name=killed", f"output.dir={tmp_path}", cwd=tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                progress = read_meta(state)["progress"]
            except CheckpointError:
                progress = {}  # replaced between our stat and read: look again
            if progress.get("epoch", 0) >= 2 and progress.get("step_in_epoch", 0) > 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = progress
                break
        time.sleep(0.01)
    assert killed_at is not None, "the run finished or stalled before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "checkpoints" / "student.safetensors").exists()  # the phase was cut short

    resumed = call_cli(*run_args("name=killed", f"output.dir={tmp_path}", "--resume"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    for phase in ("teacher", "scratch", "student"):
        a, _ = load_tensors(tmp_path / "full" / "checkpoints" / f"{phase}.safetensors")
        b, _ = load_tensors(run_dir / "checkpoints" / f"{phase}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{phase} weights differ after resume"
    assert not state.exists()  # the training state is removed once the phase is done

    def records(name):
        rows = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in rows if r["phase"] != "teacher"
        ]

    assert records("killed") == records("full")  # every epoch logged once, same numbers
    summaries = [
        json.loads((tmp_path / n / "summary.json").read_text()) for n in ("full", "killed")
    ]
    assert summaries[0]["student"]["accuracy"] == summaries[1]["student"]["accuracy"]


class Crash(Exception):
    pass


class CrashingTeacher(Teacher):
    """Dies at its ``crash_at``-th call, as a killed run would."""

    def __init__(self, module, crash_at=None):
        super().__init__(module)
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash
        return super().__call__(batch)


def on_policy_fit(state, *, crash_at=None, resume=False):
    """GKD with λ·B = 0.6 (a draw every batch) over 8 batches an epoch, checkpointed every 3."""
    ids = torch.randint(0, 13, (16, 17), generator=torch.Generator().manual_seed(0))
    data = [{"input": row[:-1], "target": row[1:]} for row in ids]
    torch.manual_seed(0)
    teacher, student = (
        create_model("gpt", num_classes=13, input_shape=(16,), n_layer=1, n_head=2, n_embd=width)
        for width in (16, 8)
    )
    terms = preset_terms("token_kd", loss="jsd", beta=0.5, alpha=0.5, temperature=1.0)
    order = torch.Generator().manual_seed(1)
    train_loop(
        Distiller(student, terms),
        DataLoader(data, batch_size=2, shuffle=True, generator=order),
        teacher=CrashingTeacher(teacher, crash_at),
        epochs=2,
        accelerator=make_accelerator("cpu"),
        progress=False,
        loop=Loop(batch_transform=OnPolicy(student, fraction=0.3, continuation=4, seed=3)),
        checkpointing=Checkpointing(state, every=3, resume=resume),
    )
    return student


def test_an_on_policy_run_resumes_to_the_same_draws_and_weights(tmp_path):
    whole = on_policy_fit(tmp_path / "whole.safetensors")
    with pytest.raises(Crash):
        # epoch 2, after the checkpoint at step 12
        on_policy_fit(tmp_path / "cut.safetensors", crash_at=14)
    resumed = on_policy_fit(tmp_path / "cut.safetensors", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


@pytest.mark.integration
def test_resume_rules(tmp_path, capsys):
    quick = [
        "data.subset=200",
        "teacher.epochs=1",
        "train.epochs=1",
        "output.latency=false",
        "output.plots=false",
        f"output.dir={tmp_path}",
    ]
    assert main(["run", *quick, "name=r", "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    assert main(["run", *quick, "name=r"]) == 0
    assert main(["run", *quick, "name=r"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert main(["run", *quick, "name=r", "train.lr=0.1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "differs" in err and "train.lr" in err
    assert main(["run", *quick, "name=r", "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["run", *quick, "name=r", "--resume", "--overwrite"]) == 2


def test_weights_are_atomic_checksummed_safetensors(tmp_path):
    model = create_model("mlp_tiny")
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    other = create_model("mlp_tiny")
    load_weights(other, path)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values())
    )

    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside a tensor
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted.safetensors.*checksum"):
        load_weights(other, corrupted)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_weights(other, truncated)


@pytest.mark.integration
def test_corrupted_teacher_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "teacher.safetensors"
    save_tensors(path, create_model("lenet").state_dict())
    path.write_bytes(path.read_bytes()[:-100])
    assert (
        main(["run", f"teacher.checkpoint={path}", "data.subset=100", f"output.dir={tmp_path}"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "teacher.safetensors" in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_teacher_with_other_classes_is_refused(tmp_path, capsys):
    path = tmp_path / "teacher5.safetensors"
    save_tensors(path, create_model("lenet", num_classes=5).state_dict())
    assert (
        main(["run", f"teacher.checkpoint={path}", "data.subset=100", f"output.dir={tmp_path}"])
        == 2
    )
    assert "teacher.checkpoint" in capsys.readouterr().err
