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


AUGMENTATIONS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "shift": random_shift,
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
    example = dataset[0]["input"] if len(dataset) else None
    if not (isinstance(example, Tensor) and example.dim() >= 2 and example.is_floating_point()):
        shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ConfigError(
            f"augment={name} translates images (C, H, W), but the inputs are {shape} (tokens or table rows): "
            "set teacher.augment=none and train.augment=none"
        )
    return Augmented(dataset, AUGMENTATIONS[name], seed)
