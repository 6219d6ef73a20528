"""Random augmentation that can be replayed: the draw for sample ``i`` in epoch ``e`` comes from
a generator seeded by ``(seed, e, i)``, so a run is reproducible and a teacher cache can store
the teacher's outputs per augmented view instead of reusing stale ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.errors import ConfigError


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Translate an image (C, H, W) by up to ``max_shift`` pixels each way, circularly (the
    border of a centred digit is background, so wrapping it around adds no ink)."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror an image left-right with probability 1/2 (natural images; not digits or text)."""
    return x.flip(-1) if torch.rand((), generator=generator).item() < 0.5 else x


def random_shift_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    return random_flip(random_shift(x, generator), generator)


AUGMENTATIONS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "shift": random_shift,
    "flip": random_flip,
    "shift_flip": random_shift_flip,
}


class Augmented(Dataset):
    """Applies ``augment`` to each sample's input; ``set_epoch`` selects the epoch's draws."""

    def __init__(self, dataset: Dataset, augment: Callable[[Tensor, torch.Generator], Tensor], seed: int = 0):
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):  # a split that redraws its samples (MovieLens)
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        # One independent stream per (seed, epoch, sample): order and workers do not matter.
        stream = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(i)) % 2**63
        generator = torch.Generator().manual_seed(stream)
        return {**sample, "input": self.augment(sample["input"], generator)}


def augmented(dataset: Dataset, name: str, seed: int = 0) -> Dataset:
    """``dataset`` with the named augmentation, or unchanged for ``"none"``."""
    if name == "none":
        return dataset
    if name not in AUGMENTATIONS:
        raise ConfigError(f"augment: unknown augmentation {name!r}; choose none or {', '.join(AUGMENTATIONS)}")
    return Augmented(dataset, AUGMENTATIONS[name], seed)
