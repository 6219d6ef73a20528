"""Trains a small classifier with gradient accumulation under whatever launcher started it and
writes, per rank, its parameters. Used by tests/test_distributed.py: two processes of batch 8
with ``grad_accum=2`` must end where one process with batches of 32 does."""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kdistill import Distiller, create_model, fit
from kdistill.data import ArrayDataset
from kdistill.methods import Term
from kdistill.training.acceleration import make_accelerator
from kdistill.training.optimization import Optimization

out_dir, batch_size, grad_accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
accelerator = make_accelerator("cpu")
generator = torch.Generator().manual_seed(0)
# 80 samples: windows of 32, 32 and a short last one of 16, whichever way they are split.
inputs = torch.randn(80, 1, 8, 8, generator=generator)
data = ArrayDataset(inputs, torch.randint(0, 4, (80,), generator=generator))
order = torch.Generator().manual_seed(1)
torch.manual_seed(0)
model = create_model("mlp", width=16, input_shape=(1, 8, 8), num_classes=4)
fit(
    Distiller(model, [Term("ce", "ce", teacher=None)]),
    DataLoader(data, batch_size=batch_size, shuffle=True, generator=order),
    epochs=2,
    lr=0.1,
    accelerator=accelerator,
    progress=False,
    optim=Optimization("sgd", momentum=0.0, schedule="constant", grad_accum=grad_accum),
)
weights = torch.nn.utils.parameters_to_vector(model.parameters()).tolist()
name = f"rank{accelerator.process_index}_of_{accelerator.num_processes}.json"
(out_dir / name).write_text(json.dumps(weights))

accelerator.end_training()  # the process group goes while the interpreter is whole
