"""Trains a student with kdistill.fit under whatever launcher started it (plain python, or
torchrun with N processes) and writes, per rank, a digest of its parameters and the final test
accuracy. Used by tests/test_distributed.py."""

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset

from kdistill import Distiller, Teacher, create_model, evaluate, fit
from kdistill.data import load_dataset
from kdistill.methods import hinton_kd, scratch
from kdistill.training.acceleration import make_accelerator

out_dir, per_process_batch = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
accelerator = make_accelerator("cpu")
splits = load_dataset("digits")


# 1,248 = 39 global batches of 32: no ragged last batch, which data-parallel loaders pad.
train = Subset(splits.train, range(1248))


def loader():
    return DataLoader(
        train,
        batch_size=per_process_batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )


# No BatchNorm and no dropout: data-parallel training is then the same computation as one
# process with the global batch, up to the order of floating-point sums.
set_seed(0)
teacher = create_model("mlp", width=128, depth=2, input_shape=(1, 8, 8))
fit(
    Distiller(teacher, scratch()),
    loader(),
    epochs=3,
    lr=3e-3,
    accelerator=accelerator,
    progress=False,
)
set_seed(1)
student = create_model("mlp", width=16, input_shape=(1, 8, 8))
history = fit(
    Distiller(student, hinton_kd()),
    loader(),
    teacher=Teacher(teacher),
    epochs=3,
    lr=3e-3,
    accelerator=accelerator,
    progress=False,
    val_loader=DataLoader(splits.val, batch_size=64),
)

digest = hashlib.sha256(
    b"".join(p.detach().numpy().tobytes() for p in student.parameters())
).hexdigest()
result = {
    "rank": accelerator.process_index,
    "world_size": accelerator.num_processes,
    "digest": digest,
    "weights": [p.detach().flatten().tolist() for p in student.parameters()],
    "test_accuracy": evaluate(student, DataLoader(splits.test, batch_size=256))["accuracy"],
    "val_accuracy": history[-1]["val/accuracy"],
}
(out_dir / f"rank{accelerator.process_index}_of_{accelerator.num_processes}.json").write_text(
    json.dumps(result)
)

accelerator.end_training()  # the process group goes while the interpreter is whole
