"""``kdistill.distill(..., cache=True)`` under whatever launcher started it, for
tests/test_distributed.py: a temporary cache that every process must share."""

import torch

import kdistill

torch.set_num_threads(1)
torch.manual_seed(0)
inputs, labels = torch.randn(64, 6), torch.arange(64) % 3
teacher = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
result = kdistill.distill(
    teacher,
    torch.nn.Linear(6, 3),
    (inputs, labels),
    epochs=1,
    cache=True,
    progress=False,
    device="cpu",
)
print(f"trained {len(result.history)} epoch(s)")

# What the scale guide asks of a script of the reader's own under torchrun.
torch.distributed.destroy_process_group()
