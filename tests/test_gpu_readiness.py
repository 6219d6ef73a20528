"""What a GPU run depends on, checked on the CPU: loss math in float32 under mixed precision, no
host-device synchronisation per training step, and compile-friendly losses (issue 19)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env
from torch import nn
from torch.utils.data import DataLoader

import kdistill
from kdistill import Distiller, Teacher, Term, create_model, fit
from kdistill.data import ArrayDataset
from kdistill.distiller import ModelOutput
from kdistill.losses import cc, dkd, nkd, nst, pkt, rkd, sp
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Loop
from kdistill.training.selection import NonFiniteLossError

# Every feature and relation loss that multiplies matrices, with the feature shape it compares.
MATMUL_LOSSES = [
    ("sp", (8, 4, 5, 5)),
    ("rkd", (8, 24)),
    ("pkt", (8, 24)),
    ("cc", (8, 24)),
    ("nst", (8, 4, 5, 5)),
    ("at", (8, 4, 5, 5)),
    ("hint", (8, 4, 5, 5)),
]


class FeatureStudent(nn.Module):
    """The tapped feature is the input itself (an identity, which autocast leaves in float32),
    so any difference under autocast comes from the loss math alone."""

    def __init__(self, shape):
        super().__init__()
        self.feature = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape[1:]).prod()), 3))

    def forward(self, x):
        return self.head(self.feature(x))


@pytest.mark.parametrize(("loss", "shape"), MATMUL_LOSSES)
def test_loss_inside_the_distiller_keeps_its_float32_value_under_bf16_autocast(loss, shape):
    generator = torch.Generator().manual_seed(0)
    # An offset makes the Gram matrices' entries large, where bf16 keeps 2-3 digits only.
    student_feature = torch.randn(shape, generator=generator) + 3.0
    teacher_feature = student_feature + 0.3 * torch.randn(shape, generator=generator)
    distiller = Distiller(FeatureStudent(shape), [Term(loss, loss, student="feature", teacher="t")])
    batch = {"input": student_feature, "target": torch.zeros(shape[0], dtype=torch.long)}
    teacher_out = ModelOutput(torch.zeros(shape[0], 3), {"t": teacher_feature})
    expected = distiller(batch, teacher_out)[f"loss/{loss}"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = distiller(batch, teacher_out)[f"loss/{loss}"]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", [sp, rkd, pkt, cc])
def test_relation_loss_called_directly_under_autocast_computes_in_float32(loss):
    generator = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(8, 24, generator=generator) + 3.0,
        torch.randn(8, 24, generator=generator) + 3.0,
    )
    expected = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(s, t), expected, rtol=1e-5, atol=1e-7)


def test_nst_called_directly_under_autocast_computes_in_float32():
    generator = torch.Generator().manual_seed(2)
    s, t = (
        torch.randn(4, 3, 5, 5, generator=generator) + 3.0,
        torch.randn(4, 6, 5, 5, generator=generator),
    )
    expected = nst(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(nst(s, t), expected, rtol=1e-5, atol=1e-7)


# --- no host-device synchronisation per step -----------------------------------------------

SYNCING = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "numpy")


@pytest.fixture
def kdistill_syncs(monkeypatch):
    """Counts the Tensor methods that wait for the device, called from kdistill's own code."""
    calls = []
    source = str(Path(kdistill.__file__).parent)

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(source):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    return calls


def _fit_one_epoch(steps: int, method: list[Term]) -> None:
    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(steps * 4, 1, 8, 8), torch.randint(0, 5, (steps * 4,)))
    student = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
    teacher = Teacher(create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=5))
    fit(
        Distiller(student, method),
        DataLoader(data, batch_size=4),
        teacher=teacher,
        epochs=1,
        accelerator=make_accelerator("cpu"),
        progress=False,
    )


@pytest.mark.parametrize("method", ["kd", "dkd", "nkd", "rkd"])
def test_an_epoch_of_60_steps_syncs_as_often_as_one_of_20(kdistill_syncs, method):
    terms = [Term("ce", "ce", teacher=None), Term(method, method)]
    _fit_one_epoch(20, terms)
    short = list(kdistill_syncs)
    kdistill_syncs.clear()
    _fit_one_epoch(60, terms)
    assert short  # the counter works: the epoch's end reads its means back
    assert len(kdistill_syncs) == len(short), (
        len(short),
        len(kdistill_syncs),
        sorted(set(kdistill_syncs)),
    )


def test_a_nan_is_caught_within_the_check_interval_naming_its_step():
    calls = []

    def exploding_at_step_3(s_logits, t_logits):
        calls.append(None)
        return s_logits.sum() * 0 + (float("nan") if len(calls) == 4 else 0.0)

    data = ArrayDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 5, (64,)))
    student = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
    distiller = Distiller(
        student, [Term("ce", "ce", teacher=None), Term("bad", exploding_at_step_3)]
    )
    teacher = Teacher(create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 in term\(s\) bad:"):
        fit(
            distiller,
            DataLoader(data, batch_size=4),
            teacher=teacher,
            epochs=1,
            progress=False,
            accelerator=make_accelerator("cpu"),
            loop=Loop(finite_check_every=5),
        )
    assert len(calls) == 5  # stopped at the check after step 5, not at the epoch's end (16)


@pytest.mark.parametrize("loss", [dkd, nkd, rkd])
def test_loss_uses_no_boolean_mask_indexing(monkeypatch, loss):
    """A boolean mask's output size is data-dependent: each such index (or ``nonzero``) waits
    for the GPU. The counter above cannot see it (it happens inside the indexing), so catch it
    where it is written, in kdistill's source."""
    masked = []
    original_getitem, original_nonzero = torch.Tensor.__getitem__, torch.Tensor.nonzero

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            masked.append(sys._getframe(1).f_code.co_filename)
        return original_getitem(self, index)

    def nonzero(self, *args, **kwargs):
        masked.append(sys._getframe(1).f_code.co_filename)
        return original_nonzero(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    monkeypatch.setattr(torch.Tensor, "nonzero", nonzero)
    generator = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    args = (s, t) if loss is rkd else (s, t, torch.tensor([0, 4, 2, 2, 1, 3]))
    assert torch.isfinite(loss(*args))
    assert masked == []


# --- CRD's memory bank under data parallelism --------------------------------------------------


@pytest.mark.integration
def test_crd_memory_bank_holds_every_rank_samples_and_is_equal_across_ranks(tmp_path):
    worker = Path(__file__).parent / "helpers" / "crd_ddp_worker.py"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29541",
            str(worker),
            str(tmp_path),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = (json.loads((tmp_path / f"crd_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == 2
    # The ranks trained on disjoint halves of the 64 samples...
    assert (
        not set(rank0["seen"]) & set(rank1["seen"])
        and len(set(rank0["seen"]) | set(rank1["seen"])) == 64
    )
    for name in ("memory_student", "memory_teacher"):
        assert rank0[name] == rank1[name]  # ...yet hold the same banks, bit for bit,
    initial, final = torch.tensor(rank0["initial_student"]), torch.tensor(rank0["memory_student"])
    moved = (final != initial).any(dim=1)
    assert moved.all(), f"rows never updated on rank 0: {(~moved).nonzero().flatten().tolist()}"


# --- the teacher's precision, memory of a finished phase, evaluation, launch modes -----------


def _tiny_fit(accelerator, **kwargs):
    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 5, (32,)))
    student = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
    teacher_model = create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=5)
    fit(
        Distiller(student, [Term("ce", "ce", teacher=None), Term("kd", "kd")]),
        DataLoader(data, batch_size=8),
        teacher=Teacher(teacher_model),
        epochs=1,
        accelerator=accelerator,
        progress=False,
        **kwargs,
    )
    return teacher_model


def test_teacher_runs_in_the_runs_precision():
    dtypes = []
    accelerator = make_accelerator("cpu", "bf16")
    try:
        torch.manual_seed(0)
        teacher_model = create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=5)
        linear = next(m for m in teacher_model.modules() if isinstance(m, nn.Linear))
        linear.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
        data = ArrayDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,)))
        student = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
        fit(
            Distiller(student, [Term("kd", "kd")]),
            DataLoader(data, batch_size=8),
            teacher=Teacher(teacher_model),
            epochs=1,
            accelerator=accelerator,
            progress=False,
        )
    finally:
        make_accelerator("cpu")  # back to full precision for the other tests
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_a_finished_phase_releases_its_optimizer_state(monkeypatch):
    import gc
    import weakref

    import kdistill.training.loop as trainer

    optimizers = []
    make = trainer.make_optimizer
    monkeypatch.setattr(
        trainer,
        "make_optimizer",
        lambda *a, **k: optimizers.append(make(*a, **k)) or optimizers[-1],
    )
    accelerator = make_accelerator("cpu")  # shared by phases, as the pipeline does
    _tiny_fit(accelerator)
    released = weakref.ref(optimizers.pop())
    gc.collect()
    assert released() is None
    assert accelerator._models == [] and accelerator._optimizers == []


def test_evaluation_copies_to_the_host_once_per_split_not_per_batch(kdistill_syncs):
    from kdistill import evaluate

    data = ArrayDataset(torch.randn(40, 1, 8, 8), torch.randint(0, 5, (40,)))
    model = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
    evaluate(model, DataLoader(data, batch_size=4), make_accelerator("cpu"))
    few = len(kdistill_syncs)
    kdistill_syncs.clear()
    evaluate(model, DataLoader(data, batch_size=2), make_accelerator("cpu"))
    assert len(kdistill_syncs) == few


def test_deterministic_mode_fixes_cublas_workspace_before_cuda_starts(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        make_accelerator("cpu", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("kind, version", [("DEEPSPEED", None), ("MEGATRON_LM", None), ("FSDP", 1)])
def test_deepspeed_megatron_and_fsdp1_launches_are_refused_pointing_to_fsdp2(kind, version):
    from accelerate.utils import DistributedType

    from kdistill.errors import UserError
    from kdistill.training.acceleration import refuse_sharded

    def launch(kind, version=None):
        state = types.SimpleNamespace(fsdp_plugin=types.SimpleNamespace(fsdp_version=version))
        return types.SimpleNamespace(distributed_type=DistributedType[kind], state=state)

    with pytest.raises(UserError, match=f"{kind}.* not supported.*--use_fsdp --fsdp_version 2"):
        refuse_sharded(launch(kind, version))
    with pytest.raises(UserError) as error:
        refuse_sharded(launch(kind, version))
    assert "\n" not in str(error.value)
    refuse_sharded(launch("MULTI_GPU"))  # DDP is fine
    refuse_sharded(launch("FSDP", 2))  # and so is FSDP2


@pytest.mark.integration
def test_gpu_check_without_cuda_records_that_and_exits_0(tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("KDISTILL_GPU_CHECK_DEVICE", None)
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "gpu.md").read_text()
    assert "CUDA available: False" in report and "no CUDA GPU here" in report
    assert json.loads((tmp_path / "gpu.json").read_text())["checks"] == []
