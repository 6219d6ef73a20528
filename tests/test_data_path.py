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
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Checkpointing, Loop, train_loop


def images(n=24):
    generator = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.rand(n, 1, 8, 8, generator=generator), torch.arange(n) % 3)


def interactions(n=24):
    users, items = np.arange(n) % 5, np.arange(n) % 7
    rated = np.unique(users * 50 + items)
    return TrainInteractions(
        users, items, np.ones(n, dtype=np.float32), rated, num_items=50, negatives=4, seed=0
    )


def epochs_of(dataset, workers: int, epochs=(1, 2)):
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, persistent_workers=workers > 0)
    served = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        served.append([batch for batch in loader])
    return served


def flat(batches):
    return torch.cat(
        [
            b["input"]["items"] if isinstance(b["input"], dict) else b["input"].flatten(1)
            for b in batches
        ]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: augmented(images(), "shift", seed=0),
        lambda: Mixed(images(), "mixup", 1.0, num_classes=3, seed=0),
        interactions,
    ],
    ids=["augmented", "mixed", "movielens negatives"],
)
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
    loader = DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    steps = iter(range(10_000))

    def crash(batch):
        if next(steps) == crash_at:
            raise Crash
        return batch

    distiller = Distiller(student, [Term("ce", "ce", teacher=None)])
    train_loop(
        distiller,
        loader,
        epochs=2,
        accelerator=make_accelerator("cpu"),
        progress=False,
        loop=Loop(batch_transform=crash),
        checkpointing=Checkpointing(run_dir / "state.safetensors", every=3, resume=resume),
    )
    return student


def test_a_resumed_epoch_skips_trained_batches_without_loading_them(tmp_path):
    whole = train(tmp_path / "whole")
    with pytest.raises(Crash):
        train(
            tmp_path / "cut", crash_at=13
        )  # epoch 2, after the checkpoint at step 12 (4 of 8 batches)
    Counted.reads = 0
    resumed = train(tmp_path / "cut", resume=True)
    assert Counted.reads == 64 - 4 * 8  # only the 4 batches after the checkpoint were read
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.state_dict().values(), resumed.state_dict().values())
    )


def test_a_shift_is_a_circular_roll_of_each_image_by_its_own_offsets():
    from kdistill.data.augment import apply_shift, draw_shift

    generator = torch.Generator().manual_seed(0)
    for shape in [
        (16, 1, 28, 28),
        (8, 3, 32, 30),
        (6, 20, 13),
    ]:  # images, colour images, (B, T, F) sequences
        x = torch.randn(*shape)
        params = draw_shift(shape[0], generator)
        expected = torch.stack(
            [
                torch.roll(image, shifts=(int(dy), int(dx)), dims=(-2, -1))
                for image, (dy, dx) in zip(x, params)
            ]
        )
        assert torch.equal(apply_shift(x, params), expected)


def rows_of(count: int, *row: float) -> torch.Tensor:
    return torch.tensor([row] * count, dtype=torch.float32)


def test_an_affine_view_is_the_identity_a_shift_or_a_quarter_turn_when_drawn_so():
    from kdistill.data.augment import (
        MAX_ROTATION,
        MAX_SHIFT,
        MAX_ZOOM,
        apply_affine,
        apply_shift,
        draw_affine,
    )

    digit = torch.full((1, 1, 28, 28), -0.42)  # a normalised background with a digit in its centre
    digit[..., 6:22, 10:18] = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) * 3
    x = torch.cat([digit, digit.flip(-1), digit.transpose(-1, -2)])
    n = len(x)
    torch.testing.assert_close(apply_affine(x, rows_of(n, 0, 1, 0, 0)), x, atol=1e-5, rtol=0)
    # Whole-pixel translations read whole pixels: the shift's circular roll (only background wraps
    # around).
    expected = apply_shift(x, torch.tensor([[2, -1]] * n))
    torch.testing.assert_close(
        apply_affine(x, rows_of(n, 0, 1, 2, -1)), expected, atol=1e-5, rtol=0
    )
    wide = torch.randn(4, 3, 12, 20)  # translations are in pixels along each axis, on any size
    moved = apply_affine(wide, rows_of(4, 0, 1, -1, 2))  # up 1, right 2
    torch.testing.assert_close(moved[..., :-1, 2:], wide[..., 1:, :-2], atol=1e-5, rtol=0)
    # A quarter turn of a square image maps pixel centres onto pixel centres.
    torch.testing.assert_close(
        apply_affine(x, rows_of(n, torch.pi / 2, 1, 0, 0)),
        torch.rot90(x, 1, (-2, -1)),
        atol=1e-4,
        rtol=0,
    )
    # Zooming in spreads the ink over more pixels, by about the zoom squared.
    ink = (x > 0.5).sum().item()
    assert 1.3 < (apply_affine(x, rows_of(n, 0, 1.25, 0, 0)) > 0.5).sum().item() / ink < 1.8
    # Any draw on a square image: the grid F.affine_grid builds from the same matrix.
    params = draw_affine(n, torch.Generator().manual_seed(1))
    angle, zoom, dy, dx = params.unbind(1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, -dx / 14], 1), torch.stack([sin, cos, -dy / 14], 1)], 1
    )
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    expected = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    torch.testing.assert_close(apply_affine(x, params), expected, atol=1e-4, rtol=0)
    draws = draw_affine(10_000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, draw_affine(10_000, torch.Generator().manual_seed(0)))  # replayable
    spread = (draws - torch.tensor([0.0, 1.0, 0.0, 0.0])).abs()
    bounds = torch.tensor([MAX_ROTATION, MAX_ZOOM, MAX_SHIFT, MAX_SHIFT])
    assert (spread <= bounds).all() and (
        spread.amax(0) > 0.95 * bounds
    ).all()  # the whole range, no more


def test_affine_views_are_for_images_only():
    from kdistill.errors import ConfigError

    sequences = ArrayDataset(torch.randn(4, 20, 13), torch.zeros(4, dtype=torch.long))
    assert augmented(sequences, "shift") is not sequences  # shifts also translate (T, F) sequences
    with pytest.raises(
        ConfigError,
        match=r"augment=affine rotates and zooms images \(C, H, W\), but the inputs are \(20, 13\)",
    ):
        augmented(sequences, "affine")
