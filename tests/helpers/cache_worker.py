"""Builds a teacher cache under whatever launcher started it, for tests/test_cache_nodes.py.
``local``: each process's machine gets its own directory (node-local disks, simulated by one
directory per rank); ``shared``: one directory for all."""

import sys
from pathlib import Path

import torch

from kdistill.data.base import ArrayDataset
from kdistill.distiller import Teacher
from kdistill.teachers.cache import build_cache
from kdistill.training.acceleration import make_accelerator

base, layout = Path(sys.argv[1]), sys.argv[2]
topk = int(sys.argv[3]) if len(sys.argv) > 3 else None
torch.set_num_threads(1)
accelerator = make_accelerator("cpu")
torch.manual_seed(0)
data = ArrayDataset(torch.randn(37, 6), torch.arange(37) % 3)  # 37 samples: ranks get 19 and 18
teacher = Teacher(torch.nn.Linear(6, 3))
where = f"node{accelerator.process_index}" if layout == "local" else "shared"
build_cache(
    base / where,
    teacher,
    data,
    fingerprint={"test": 1},
    dtype="float32",
    batch_size=8,
    accelerator=accelerator if accelerator.num_processes > 1 else None,
    topk=topk,
)

accelerator.end_training()  # the process group goes while the interpreter is whole
