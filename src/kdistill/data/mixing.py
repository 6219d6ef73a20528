"""Mixup and CutMix that can be replayed exactly, for function matching.

Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, "Knowledge distillation: A good teacher is
patient and consistent", CVPR 2022, arXiv:2106.05237: the student matches the teacher's
function on the *same* strongly augmented view, mixed between images so that the teacher is
also queried off the data manifold, for a long schedule. kdistill's teacher always scores the
student's own batch (live), or a cached copy of exactly that view (``teacher.cache``), so the
views are consistent by construction; this module adds the mixing.

How a mixed view is replayed: sample ``i`` of epoch ``e`` takes its partner ``j`` and its mixing
weight ``λ ~ Beta(α, α)`` (and, for CutMix, the box) from a generator seeded by
``(seed, e, i)`` alone, so the view is a function of (seed, epoch, index): the same in the
scratch and the distilled student, across a resume, under any batch order or number of
processes, and the same when the teacher cache builds view ``e``. That is why the partner is
drawn from the whole training split rather than from the batch (the papers permute the batch):
the distribution of pairs is the same, and the cache stays exact.

A mixed sample's ``target`` is its label distribution, ``λ·onehot(y_i) + (1 − λ)·onehot(y_j)``
(float, (C,)): ``F.cross_entropy`` reads it as class probabilities (soft-target CE, the
scratch student's objective under mixing). Terms that need class indices are refused
(``check_mix_terms``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.errors import ConfigError
from kdistill.losses.logit import cross_entropy

MIXES = ("none", "mixup", "cutmix")
# Terms that read a mixed sample's label distribution correctly: only cross-entropy. DKD, NKD
# and the like split the logits at the one true class, which a mixed image does not have.
SOFT_TARGET_LOSSES = (cross_entropy,)
_SALT = 7_919  # keeps the mixing draws apart from the augmentation's stream of the same sample


def mix_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one generator sample ``index`` of ``epoch`` draws its partner, λ and box from."""
    return np.random.default_rng([seed, epoch, index, _SALT])


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 − lam`` of the image, centred uniformly, clipped at the border
    (Yun et al., "CutMix", ICCV 2019, arXiv:1905.04899). Returns (top, bottom, left, right)."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width)


def mix_pair(x: Tensor, partner: Tensor, mix: str, lam: float, rng: np.random.Generator) -> tuple[Tensor, float]:
    """``x`` mixed with ``partner``; returns the input and the share of ``x`` in it."""
    if mix == "mixup":  # Zhang et al., "mixup", ICLR 2018, arXiv:1710.09412
        return lam * x + (1.0 - lam) * partner, lam
    top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    # The label follows the pixels: a box clipped at the border pastes less than 1 − lam.
    return mixed, 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])


class Mixed(Dataset):
    """Each sample mixed with a partner from the same split (see the module docstring);
    ``set_epoch`` selects the epoch's pairs and is passed on to the wrapped dataset."""

    def __init__(self, dataset: Dataset, mix: str, alpha: float, num_classes: int, seed: int = 0):
        self.dataset, self.mix, self.alpha, self.num_classes, self.seed = dataset, mix, alpha, num_classes, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def soft(self, target: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(torch.as_tensor(target).long(), self.num_classes).float()

    def __getitem__(self, i: int) -> dict:
        rng = mix_generator(self.seed, self.epoch, int(i))
        j = int(rng.integers(len(self.dataset)))
        lam = float(rng.beta(self.alpha, self.alpha))
        sample, partner = self.dataset[i], self.dataset[j]
        mixed, share = mix_pair(sample["input"], partner["input"], self.mix, lam, rng)
        target = share * self.soft(sample["target"]) + (1.0 - share) * self.soft(partner["target"])
        return {**sample, "input": mixed, "target": target}


def mixed(dataset: Dataset, mix: str, *, alpha: float, num_classes: int | None, seed: int = 0) -> Dataset:
    """``dataset`` with the named mixing, or unchanged for ``"none"``."""
    if mix == "none":
        return dataset
    if mix not in MIXES:
        raise ConfigError(f"train.mix: unknown mixing {mix!r}; choose from {', '.join(MIXES)}")
    if not num_classes:
        raise ConfigError(f"train.mix={mix}: mixing needs a classification task (labels to mix); set train.mix=none")
    return Mixed(dataset, mix, alpha, num_classes, seed)


def check_mix_terms(mix: str, terms, task: str) -> None:
    """Refuse what mixing would silently break: a non-classification task, or a term that
    splits the logits at one true class (a mixed image has two)."""
    if mix == "none":
        return
    if task != "classification":
        raise ConfigError(f"train.mix={mix}: mixing is for image classification, not {task}; set train.mix=none")
    for term in terms:
        if term.takes_target and term.loss not in SOFT_TARGET_LOSSES:
            raise ConfigError(
                f"train.mix={mix}: term {term.name} reads one true class per sample, which a mixed "
                "image does not have; use kd/function matching (alpha: 1) or set train.mix=none"
            )
