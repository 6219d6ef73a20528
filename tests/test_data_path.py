"""The data path: persistent loader workers still serve each epoch's own augmented, mixed and
resampled views (the epoch reaches them through shared memory), and a resumed epoch skips the
batches it already trained on without loading them."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller, Term
from kdistill.data.augment import augmented
from kdistill.data.base import ArrayDataset
from kdistill.data.mixing import Mixed
from kdistill.data.movielens import TrainInteractions
from kdistill.trainer import Checkpointing, Loop, fit, make_accelerator


def images(n=24):
    generator = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.rand(n, 1, 8, 8, generator=generator), torch.arange(n) % 3)


def interactions(n=24):
    users, items = np.arange(n) % 5, np.arange(n) % 7
    rated = np.unique(users * 50 + items)
    return TrainInteractions(users, items, np.ones(n, dtype=np.float32), rated, num_items=50, negatives=4, seed=0)


def epochs_of(dataset, workers: int, epochs=(1, 2)):
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, persistent_workers=workers > 0)
    served = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        served.append([batch for batch in loader])
    return served


def flat(batches):
    return torch.cat([b["input"]["items"] if isinstance(b["input"], dict) else b["input"].flatten(1) for b in batches])


@pytest.mark.parametrize("make", [
    lambda: augmented(images(), "shift", seed=0),
    lambda: Mixed(images(), "mixup", 1.0, num_classes=3, seed=0),
    interactions,
], ids=["augmented", "mixed", "movielens negatives"])
def test_persistent_workers_serve_each_epochs_own_views(make):
    alone = epochs_of(make(), workers=0)
    pooled = epochs_of(make(), workers=2)
    assert not torch.equal(flat(alone[0]), flat(alone[1]))  # the views change with the epoch
    for epoch_alone, epoch_pooled in zip(alone, pooled):
        assert torch.equal(flat(epoch_alone), flat(epoch_pooled))  # and the workers see the change


class Counted(ArrayDataset):
    """Counts the samples the loader reads."""

    reads = 0

    def __getitems__(self, indices):
        Counted.reads += len(indices)
        return super().__getitems__(indices)


class Crash(Exception):
    pass


def train(run_dir, *, crash_at=None, resume=False):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = Counted(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 4)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    steps = iter(range(10_000))

    def crash(batch):
        if next(steps) == crash_at:
            raise Crash
        return batch

    distiller = Distiller(student, [Term("ce", "ce", teacher=None)])
    fit(distiller, loader, epochs=2, accelerator=make_accelerator("cpu"), progress=False,
        loop=Loop(batch_transform=crash), checkpointing=Checkpointing(run_dir / "state.safetensors", every=3, resume=resume))
    return student


def test_a_resumed_epoch_skips_trained_batches_without_loading_them(tmp_path):
    whole = train(tmp_path / "whole")
    with pytest.raises(Crash):
        train(tmp_path / "cut", crash_at=13)  # epoch 2, after the checkpoint at step 12 (4 of 8 batches)
    Counted.reads = 0
    resumed = train(tmp_path / "cut", resume=True)
    assert Counted.reads == 64 - 4 * 8  # only the 4 batches after the checkpoint were read
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_a_shift_is_a_circular_roll_of_each_image_by_its_own_offsets():
    from kdistill.data.augment import apply_shift, draw_shift

    generator = torch.Generator().manual_seed(0)
    for shape in [(16, 1, 28, 28), (8, 3, 32, 30), (6, 20, 13)]:  # images, colour images, (B, T, F) sequences
        x = torch.randn(*shape)
        params = draw_shift(shape[0], generator)
        expected = torch.stack([
            torch.roll(image, shifts=(int(dy), int(dx)), dims=(-2, -1)) for image, (dy, dx) in zip(x, params)
        ])
        assert torch.equal(apply_shift(x, params), expected)
