"""Mixup and CutMix that can be replayed exactly, for function matching.

Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, "Knowledge distillation: A good teacher is
patient and consistent", CVPR 2022, arXiv:2106.05237: the student matches the teacher's
function on the *same* strongly augmented view, mixed between images so that the teacher is
also queried off the data manifold, for a long schedule. kdistill's teacher always scores the
student's own batch (live), or a cached copy of exactly that view (``teacher.cache``), so the
views are consistent by construction; this module adds the mixing.

How a mixed view is replayed: the draws of epoch ``e`` come from one generator seeded by
``(seed, e)`` (``mix_draws``), one row per sample index: its partner ``j`` (any image of the
training split), its mixing weight ``λ ~ Beta(α, α)`` and, for CutMix, the box centre. So the
mixed view of sample ``i`` is a function of (seed, e, i) alone: the same in the scratch and the
distilled student, across a resume, under any batch order or number of processes, and the same
when the teacher cache builds view ``e``. That is why the partner is drawn from the whole split
rather than from the batch (the papers permute the batch): the distribution of pairs is the
same, and the cache stays exact. Each image enters in its own augmented view of that epoch.

A mixed sample's ``target`` is its label distribution, ``λ·onehot(y_i) + (1 − λ)·onehot(y_j)``
(float, (C,)): ``F.cross_entropy`` reads it as class probabilities (soft-target CE, the
scratch student's objective under mixing). Terms that need class indices are refused
(``check_mix_terms``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.data.augment import epoch_generator, fetch
from kdistill.data.base import SampleBatch, SharedEpoch
from kdistill.errors import ConfigError
from kdistill.losses.logit import cross_entropy

MIXES = ("none", "mixup", "cutmix")
# Terms that read a mixed sample's label distribution correctly: only cross-entropy. DKD, NKD
# and the like split the logits at the one true class, which a mixed image does not have.
SOFT_TARGET_LOSSES = (cross_entropy,)
_SALT = 7_919  # keeps the mixing draws apart from the augmentation's stream of the same sample


@dataclass(frozen=True)
class MixDraws:
    partner: Tensor  # (N,) index of each sample's partner
    lam: Tensor  # (N,) share of the sample itself before CutMix's box is clipped
    centre: Tensor  # (N, 2) CutMix box centre (row, column) as a fraction of the image


def mix_draws(count: int, alpha: float, seed: int, epoch: int) -> MixDraws:
    """Every sample's partner, λ and box centre for
    ``epoch``, from one generator of (seed, epoch)."""
    generator = epoch_generator(seed, epoch, salt=_SALT)
    partner = torch.randint(count, (count,), generator=generator)
    # torch's Beta sampler takes no generator: numpy's draws λ, seeded from this epoch's stream.
    numpy = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
    lam = torch.from_numpy(numpy.beta(alpha, alpha, size=count)).float()
    centre = torch.rand((count, 2), generator=generator)
    return MixDraws(partner, lam, centre)


def cutmix_masks(shape: tuple[int, int], lam: Tensor, centre: Tensor) -> Tensor:
    """(B, H, W) masks, True inside each box: side sqrt(1 − λ) of the image's, centred at
    ``centre``, clipped at the border (Yun et al., "CutMix", ICCV 2019, arXiv:1905.04899)."""
    height, width = shape
    cut = (1.0 - lam).clamp(min=0).sqrt()
    half_h, half_w = (height * cut).long() // 2, (width * cut).long() // 2
    cy, cx = (centre[:, 0] * height).long(), (centre[:, 1] * width).long()
    rows, cols = torch.arange(height)[None, :], torch.arange(width)[None, :]
    inside_rows = (rows >= (cy - half_h)[:, None]) & (rows < (cy + half_h)[:, None])
    inside_cols = (cols >= (cx - half_w)[:, None]) & (cols < (cx + half_w)[:, None])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def mix_batch(
    x: Tensor, partner: Tensor, mix: str, lam: Tensor, centre: Tensor
) -> tuple[Tensor, Tensor]:
    """Inputs (B, C, H, W) mixed with their partners; returns them and each one's own share."""
    if mix == "mixup":  # Zhang et al., "mixup", ICLR 2018, arXiv:1710.09412
        weight = lam.view(-1, *([1] * (x.dim() - 1)))
        return weight * x + (1.0 - weight) * partner, lam
    masks = cutmix_masks(x.shape[-2:], lam, centre)
    mixed = torch.where(masks[:, None], partner, x)
    # The label follows the pixels: a box clipped at the border pastes less than 1 − λ.
    return mixed, 1.0 - masks.flatten(1).float().mean(1)


def _stack(samples: list[dict]) -> dict[str, Tensor]:
    return {
        "input": torch.stack([s["input"] for s in samples]),
        "target": torch.stack([torch.as_tensor(s["target"]) for s in samples]),
    }


class Mixed(Dataset):
    """Each sample mixed with a partner from the same split (see the module docstring);
    ``set_epoch`` selects the epoch's pairs and is passed on to the wrapped dataset."""

    def __init__(self, dataset: Dataset, mix: str, alpha: float, num_classes: int, seed: int = 0):
        self.dataset, self.mix, self.alpha, self.num_classes, self.seed = (
            dataset,
            mix,
            alpha,
            num_classes,
            seed,
        )
        self._epoch = SharedEpoch()  # read by persistent loader workers too
        self._draws: tuple[int, MixDraws] | None = None

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def draws(self) -> MixDraws:
        if self._draws is None or self._draws[0] != self.epoch:
            self._draws = (self.epoch, mix_draws(len(self), self.alpha, self.seed, self.epoch))
        return self._draws[1]

    def __getitems__(self, indices: list[int]) -> list[dict] | SampleBatch:
        draws, rows = self.draws(), torch.as_tensor(indices)
        partners = draws.partner[rows]
        # The samples and their partners in one fetch: one augmentation call per batch, not two.
        count = len(indices)
        both = fetch(self.dataset, [*(int(i) for i in indices), *partners.tolist()])
        batched = isinstance(both, SampleBatch)
        if batched:
            samples = SampleBatch({k: v[:count] for k, v in both.tensors.items()})
            own, theirs = samples.tensors, {k: v[count:] for k, v in both.tensors.items()}
        else:
            samples = both[:count]
            own, theirs = _stack(samples), _stack(both[count:])
        inputs, share = mix_batch(
            own["input"], theirs["input"], self.mix, draws.lam[rows], draws.centre[rows]
        )
        eye = torch.eye(self.num_classes)
        targets = (
            share[:, None] * eye[own["target"].long()]
            + (1.0 - share[:, None]) * eye[theirs["target"].long()]
        )
        if batched:  # stays stacked: no split into dicts and back
            return SampleBatch({**samples.tensors, "input": inputs, "target": targets})
        return [{**s, "input": x, "target": y} for s, x, y in zip(samples, inputs, targets)]

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([int(i)])[0]


def mixed(
    dataset: Dataset, mix: str, *, alpha: float, num_classes: int | None, seed: int = 0
) -> Dataset:
    """``dataset`` with the named mixing, or unchanged for ``"none"``."""
    if mix == "none":
        return dataset
    if mix not in MIXES:
        raise ConfigError(f"train.mix: unknown mixing {mix!r}; choose from {', '.join(MIXES)}")
    if not num_classes:
        raise ConfigError(
            f"train.mix={mix}: mixing needs a classification "
            "task (labels to mix); set train.mix=none"
        )
    return Mixed(dataset, mix, alpha, num_classes, seed)


def can_mix(mix: str, example) -> bool:
    """Whether ``mix`` applies to inputs like ``example``: mixup to any float input, CutMix only
    to images (C, H, W), whose box it cuts; neither to token ids."""
    if mix in ("none", "same"):  # "same": the scratch student's mixing is the distilled one's
        return True
    floats = isinstance(example, Tensor) and example.is_floating_point()
    return floats and (mix == "mixup" or example.dim() == 3)


def check_mix_terms(mix: str, terms, task: str) -> None:
    """Refuse what mixing would silently break: a non-classification task, or a term that
    splits the logits at one true class (a mixed image has two)."""
    if mix == "none":
        return
    if task != "classification":
        raise ConfigError(
            f"train.mix={mix}: mixing is for image classification, not {task}; set train.mix=none"
        )
    for term in terms:
        if term.takes_target and term.loss not in SOFT_TARGET_LOSSES:
            raise ConfigError(
                f"train.mix={mix}: term {term.name} reads one true class per sample, which a mixed "
                "image does not have; use kd/function matching (alpha: 1) or set train.mix=none"
            )
