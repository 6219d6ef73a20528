"""Trains a student with CRD through kdistill.fit under torchrun and writes, per rank, its
memory banks before and after one epoch and the sample indices it trained on. Used by
tests/test_gpu_readiness.py (CRD under data parallelism, on CPUs) and bench/gpu_check.py (on
GPUs: ``crd_ddp_worker.py OUT_DIR cuda``)."""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, Term, create_model, fit
from kdistill.data import ArrayDataset
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Loop

out_dir = Path(sys.argv[1])
device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
torch.set_num_threads(1)
accelerator = make_accelerator(device)
# Each rank draws its own initial bank (different seeds), as independent processes may.
set_seed(accelerator.process_index)
data = ArrayDataset(
    torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
    torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(1)),
)
student = create_model("mlp", width=8, input_shape=(1, 8, 8), num_classes=5)
teacher = Teacher(create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=5))
terms = [Term("ce", "ce", teacher=None), Term("crd", "crd", params={"feat_dim": 16})]
distiller = Distiller.build(
    student,
    terms,
    teacher=teacher,
    example_batch=next(iter(DataLoader(data, batch_size=4))),
    num_samples=len(data),
)
crd = distiller.loss_modules["crd"]
initial = crd.memory_student.clone()
seen = []
fit(
    distiller,
    DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
    teacher=teacher,
    epochs=1,
    accelerator=accelerator,
    progress=False,
    loop=Loop(batch_transform=lambda batch: seen.extend(batch["index"].tolist()) or batch),
)
result = {
    "world_size": accelerator.num_processes,
    "initial_student": initial.cpu().tolist(),
    "memory_student": crd.memory_student.cpu().tolist(),
    "memory_teacher": crd.memory_teacher.cpu().tolist(),
    "seen": seen,
}
(out_dir / f"crd_rank{accelerator.process_index}.json").write_text(json.dumps(result))

accelerator.end_training()  # the process group goes while the interpreter is whole
