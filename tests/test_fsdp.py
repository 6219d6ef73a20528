"""FSDP2 through Accelerate (``train.strategy: fsdp``) on two CPU processes (gloo): a tiny
Llama teacher distilled into a smaller Llama student (tests/helpers/fsdp_worker.py) trains to
the weights of one process with the same global batch and of DDP, with student and teacher
sharded; a SIGKILLed run resumes from its sharded checkpoint bit for bit, and into another
number of processes; feature taps, connectors and keep=best work; what is not supported is
refused with one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from safetensors import safe_open
from safetensors.torch import load_file
from test_distributed import TORCHRUN, free_port
from test_lm import QUICK as LM_QUICK

from kdistill.errors import UserError
from kdistill.io.tensors import read_meta
from kdistill.training.acceleration import make_accelerator

WORKER = Path(__file__).parent / "helpers" / "fsdp_worker.py"
# Measured over 8 Adam steps (chunked token_kd): FSDP vs one process 2e-7, FSDP vs DDP 0 (two
# ranks average the same two sums). A feature term through a connector moves a few weights
# whose gradients are near zero, which Adam scales up: 4.4e-5 after the best (first) epoch.
EQUAL_ATOL = 1e-5
FEATURE_ATOL = 5e-4


def worker(out: Path, strategy: str, processes: int, *flags: str, check: bool = True):
    """The worker on ``processes`` ranks with the global batch 8 (python itself for one)."""
    batch = str(8 // processes)
    launch = (
        [str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", free_port()]
        if processes > 1
        else [sys.executable]
    )
    result = subprocess.run(
        [*launch, str(WORKER), str(out), strategy, batch, *flags],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def results(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def max_difference(a: dict, b: dict) -> float:
    return max(
        (torch.tensor(x) - torch.tensor(y)).abs().max().item()
        for x, y in zip(a["weights"], b["weights"], strict=True)
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    worker(out, "fsdp", 2, "chunk", "every=1")  # checkpoints every step: the resume reference
    worker(out, "ddp", 2, "chunk")
    worker(out, "ddp", 1, "chunk")
    return results(out)


@pytest.mark.integration
def test_fsdp_on_two_processes_equals_one_process_and_ddp(runs):
    rank0, rank1 = runs["fsdp-rank0_of_2"], runs["fsdp-rank1_of_2"]
    assert rank0["sharded"] and not runs["ddp-rank0_of_2"]["sharded"]
    assert rank0["digest"] == rank1["digest"]  # every rank ends with the same whole student
    assert max_difference(rank0, runs["ddp-rank0_of_1"]) <= EQUAL_ATOL
    assert max_difference(rank0, runs["ddp-rank0_of_2"]) <= EQUAL_ATOL
    assert rank0["teacher_digest"] == runs["ddp-rank0_of_1"]["teacher_digest"]  # handed back
    for rank in (rank0, rank1):
        for model in ("student", "teacher"):
            seen = rank["seen"][model]
            assert seen["dtensors"] and seen["local"] * 2 == seen["whole"]  # half on each rank
            assert seen["lazy_logits"]  # FSDP's hooks do not turn the chunked losses off
        assert rank["seen"]["teacher"]["trainable"] == 0  # frozen: no gradient, no optimizer


@pytest.mark.integration
def test_sigkill_then_resume_is_bit_identical_and_loads_into_one_process(runs, tmp_path):
    killed, other = tmp_path / "killed", tmp_path / "one"
    killed.mkdir(), other.mkdir()
    result = worker(killed, "fsdp", 2, "chunk", "every=1", "kill_at=5", check=False)
    assert result.returncode != 0 and not list(killed.glob("*.json"))  # killed mid-epoch 2
    # Sharded: the file holds no weights; its one folder of shards, one file a rank, does.
    meta = read_meta(killed / "state-fsdp.safetensors")
    (folder,) = killed.glob("state-fsdp.shards-*")  # the earlier saves' folders are gone
    assert meta["shards"]["folder"] == folder.name
    assert sorted(meta["shards"]["files"]) == sorted(f.name for f in folder.iterdir())
    assert len(meta["shards"]["files"]) == 2
    with safe_open(killed / "state-fsdp.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith(("model.", "optimizer."))]
    shutil.copy(killed / "state-fsdp.safetensors", other / "state-fsdp.safetensors")
    shutil.copytree(folder, other / folder.name)
    damaged = tmp_path / "damaged"
    shutil.copytree(other, damaged)
    worker(killed, "fsdp", 2, "chunk", "every=1", "resume")
    worker(other, "fsdp", 1, "chunk", "every=1", "resume")
    uninterrupted = runs["fsdp-rank0_of_2"]
    resumed = results(killed)
    assert resumed["fsdp-rank0_of_2"]["digest"] == uninterrupted["digest"]
    assert resumed["fsdp-rank1_of_2"]["digest"] == uninterrupted["digest"]
    # The same state finished by one process: the same updates, summed in another order.
    assert max_difference(results(other)["fsdp-rank0_of_1"], uninterrupted) <= EQUAL_ATOL
    # A damaged shard: one line, exit 2, nothing loaded.
    shard = sorted((damaged / folder.name).iterdir())[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = worker(damaged, "fsdp", 1, "chunk", "every=1", "resume", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{shard.name} is missing, damaged or foreign" in result.stdout


@pytest.mark.integration
def test_feature_taps_connectors_and_keep_best_under_fsdp(tmp_path):
    """A hint term on hidden states through a linear connector (in the sharded root), and the
    first epoch kept as best (the worker's validation worsens after it): gathered whole onto
    rank 0, saved beside the checkpoint and sharded back out at the end."""
    worker(tmp_path, "fsdp", 2, "chunk", "taps", "best", "every=2")
    worker(tmp_path, "ddp", 1, "chunk", "taps", "best")
    runs = results(tmp_path)
    assert runs["fsdp-rank0_of_2"]["digest"] == runs["fsdp-rank1_of_2"]["digest"]
    assert max_difference(runs["fsdp-rank0_of_2"], runs["ddp-rank0_of_1"]) <= FEATURE_ATOL
    assert (tmp_path / "state-fsdp.best.safetensors").is_file()


@pytest.mark.integration
def test_on_policy_generation_under_fsdp_is_refused_with_one_line(tmp_path):
    result = worker(tmp_path, "fsdp", 2, "on_policy", check=False)
    refusal = "UserError: on-policy generation with train.strategy=fsdp: sampling"
    assert result.returncode != 0 and result.stdout.count(refusal) == 2  # each rank, one line


@pytest.mark.integration
def test_sequence_kd_under_fsdp_trains_as_under_ddp(tmp_path):
    """The teacher's sequences swap tensors in the batch before the sharded step: FSDP on two
    ranks ends where DDP on two ranks does, with the same rows replaced on each rank."""
    for strategy in ("fsdp", "ddp"):
        worker(tmp_path, strategy, 2, "sequence_kd")
    runs = results(tmp_path)
    assert max_difference(runs["fsdp-rank0_of_2"], runs["ddp-rank0_of_2"]) <= EQUAL_ATOL
    assert runs["fsdp-rank0_of_2"]["digest"] == runs["fsdp-rank1_of_2"]["digest"]


def test_compile_under_fsdp_is_refused_with_one_line():
    with pytest.raises(UserError, match="train.compile with train.strategy=fsdp") as error:
        make_accelerator("cpu", compile=True, strategy="fsdp")
    assert "\n" not in str(error.value)


def kdistill_run(tmp_path, *settings, env=None):
    """``kdistill run`` (the console script) on two processes, a small digits recipe."""
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", free_port()]
    command += ["--no-python", str(Path(sys.executable).with_name("kdistill")), "run"]
    command += [
        "data.dataset=digits",
        "data.subset=300",
        "teacher.model=mlp",
        "teacher.augment=none",
        "student.model=mlp_tiny",
        "teacher.epochs=1",
        "train.epochs=1",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
        f"output.dir={tmp_path}",
        "name=fsdp",
        *settings,
    ]
    return subprocess.run(
        command,
        env={**subprocess_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "setting, env",
    [
        # The recipe's setting under torchrun, with a teacher cache: built with the teacher
        # unsharded (each rank its rows), then read by the sharded student's phase.
        ("train.strategy=fsdp teacher.cache=true", {}),
        ("train.strategy=ddp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}),
    ],
    ids=["recipe", "accelerate-launch"],
)
def test_kdistill_run_trains_every_phase_sharded(tmp_path, setting, env):
    """``train.strategy: fsdp``, or what ``accelerate launch --use_fsdp --fsdp_version 2``
    sets (the launch wins over the recipe's default): every phase (teacher, scratch and
    distilled student) trains sharded, and the run's files are written once."""
    result = kdistill_run(tmp_path, *setting.split(), env=env)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    assert "world_size=2" in result.stdout and result.stdout.count("Run written to") == 1
    assert "sharded (fsdp)" in result.stdout
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "fsdp"
    # Saved whole (every phase handed its weights back): all of the student's parameters.
    weights = load_file(tmp_path / "fsdp" / "checkpoints" / "student.safetensors")
    assert sum(t.numel() for t in weights.values()) == summary["student"]["params"] > 0
    # Each phase's sharded training state went with the phase.
    assert not list((tmp_path / "fsdp" / "checkpoints").glob("*.shards-*"))
    if "teacher.cache=true" in setting:
        caches = list((tmp_path / ".cache").iterdir())
        assert len(caches) == 1 and (caches[0] / "meta.json").is_file()


@pytest.mark.integration
def test_a_language_model_with_tied_weights_trains_sharded_from_a_hidden_state_cache(tmp_path):
    """The built-in GPT (its head shares the embedding) under FSDP: its sharded checkpoints
    hold the tied weight once, it is scored with its logits made inside the forward pass (an
    FSDP unit frees its head after it), and the distilled student reads JSD from a
    hidden-state cache."""
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", free_port()]
    command += ["--no-python", str(Path(sys.executable).with_name("kdistill")), "run"]
    command += [
        str(Path(__file__).resolve().parents[1] / "configs" / "lm_kd.yaml"),
        *LM_QUICK,
        "output.progress=false",
        f"output.dir={tmp_path}",
        "train.strategy=fsdp",
        "teacher.cache=true",
        "teacher.cache_hidden=true",
        "distill.params={loss: jsd, beta: 0.5, chunk_size: 64}",
    ]
    result = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    assert "sharded (fsdp)" in result.stdout
    summary = json.loads((tmp_path / "lm_kd" / "summary.json").read_text())
    assert summary["strategy"] == "fsdp" and 1 < summary["student"]["perplexity"] < 200
    (cache,) = (tmp_path / ".cache").iterdir()
    assert json.loads((cache / "meta.json").read_text())["signal"]["kind"] == "hidden"


@pytest.mark.integration
def test_fsdp1_launch_is_refused_with_one_line_pointing_to_fsdp2(tmp_path):
    result = kdistill_run(tmp_path, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    refusal = "error: distributed type FSDP version 1 is not supported; shard with FSDP2"
    assert result.returncode != 0 and result.stderr.count(refusal) == 2
    assert "kdistill/" not in result.stderr  # no traceback of ours (torchrun prints its own)
