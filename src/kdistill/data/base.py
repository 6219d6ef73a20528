"""In-memory datasets whose samples carry their index, and a stratified split.

Every sample is a dict ``{"input": x, "target": y, "index": i}``: the index lets a teacher cache
or a memory-bank method (CRD) find the sample again, whatever order the loader draws it in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from kdistill.errors import DataError

# Classes a dataset may have: the run reports a K×K confusion matrix for every model, and a
# stray label must not size it (one label of 1e5 asked for 80 GB).
MAX_CLASSES = 10_000


class SharedEpoch:
    """The epoch a training set serves, in shared memory so DataLoader workers see it.

    Augmented, mixed and resampled training sets draw each epoch's views from (seed, epoch).
    The trainer sets the epoch on the dataset in the main process; a persistent worker holds a
    copy of the dataset made once, so a plain attribute would stay at the first epoch there and
    every later epoch would replay the first epoch's views. A shared-memory tensor is one value
    for all of them (DataLoader's workers share torch tensors that live in shared memory).
    """

    def __init__(self, epoch: int = 0):
        self._value = torch.full((), epoch, dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self._value)

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)


class SampleBatch(Sequence):
    """The samples of one batch, held as stacked tensors.

    PyTorch's ``__getitems__`` returns a batch's samples as a list that the collate function
    stacks again; for a small model, splitting a batch into 64 dicts and restacking them at every
    layer (the split, its augmentation, its mixing) cost more than the model's step. Indexing
    this gives the sample dicts, so it is still the list ``__getitems__`` promises (default_collate
    and ``Subset`` take it as one); ``collate`` hands the tensors on as the batch, untouched."""

    def __init__(self, tensors: dict[str, Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {key: value[i] for key, value in self.tensors.items()}


def collate(samples) -> dict:
    """A batch from a ``SampleBatch`` as it is, and from
    anything else as ``default_collate`` makes it."""
    if isinstance(samples, SampleBatch):
        return dict(samples.tensors)
    return default_collate(samples)


class ArrayDataset(Dataset):
    """Inputs and integer targets held as tensors; ``index`` is the position in this dataset."""

    def __init__(self, inputs: Tensor, targets: Tensor):
        if len(inputs) != len(targets):
            raise DataError(f"{len(inputs)} inputs but {len(targets)} targets: they must match")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input": self.inputs[i], "target": self.targets[i], "index": torch.tensor(i)}

    def __getitems__(self, indices: list[int]) -> SampleBatch:
        """A batch's samples in one indexing (the DataLoader's batched fetch): the same dicts."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        return SampleBatch(
            {"input": self.inputs[rows], "target": self.targets[rows], "index": rows}
        )


@dataclass
class DataSplits:
    """Train / validation / test datasets and what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    task: str = "classification"  # a key of kdistill.evaluation.TASKS: how models are scored
    # How inputs were made from the raw data (normalisation, split): part of the identity of
    # the data, recorded in summaries and in a teacher's fingerprint.
    identity: dict = field(default_factory=dict)
    # Inputs carry the teacher's own tokenisation too (``kdistill.modeling.TEACHER_PREFIX``).
    teacher_inputs: bool = False
    # A transfer set (``data.unlabelled``): inputs without labels, standardised as the training
    # split is; only a distilled student trains on them (``kdistill.data.transfer``).
    unlabelled: Tensor | None = None
    # The labels of a bundled dataset's samples outside data.subset (``unlabelled`` holds their
    # inputs): for ``teacher.data: rest`` alone, a teacher that learns from more labels than the
    # student has; no student ever reads them.
    rest_targets: Tensor | None = None
    # The teacher's training set where it is more than ``train`` (``teacher.data``).
    teacher_train: Dataset | None = None


def stratified_split(
    targets: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Split sample positions into len(fractions) groups with the class mix of the whole.

    Each class is shuffled with ``seed`` and cut at the cumulative fractions, so the split depends
    only on the labels and the seed. Returns sorted index arrays.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {fractions} must sum to 1")
    rng = np.random.default_rng(seed)
    groups: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        rng.shuffle(members)
        cuts = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for group, part in zip(groups, np.split(members, cuts)):
            group.append(part)
    return [np.sort(np.concatenate(g)) for g in groups]


def check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> None:
    """Reject what would make training silently wrong: NaN/inf inputs, bad or empty labels."""
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty; it needs at least one sample per class")
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} inputs but {len(y)} labels; they must match")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise DataError(f"{source}: {bad} samples contain NaN or inf; clean or drop them")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            return
        raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{source}: labels must be class indices 0..C-1, found {int(y.min())}")


def check_classes(y: np.ndarray, class_names: list[str] | None, source: str) -> None:
    """Refuse labels of fewer than 2 classes: a classifier of one class scores 100 % and has
    learnt nothing (three such models trained and reported before this check)."""
    present = np.unique(y)
    if len(present) < 2:
        only = f" ({class_names[int(present[0])]!r})" if len(present) and class_names else ""
        raise DataError(
            f"{source}: {len(present)} class{only} in {len(y)} labelled samples; a classifier "
            "needs at least 2 classes: add samples of another class"
        )


def warn_missing_classes(
    splits: dict[str, np.ndarray], class_names: list[str] | None, source: str
) -> None:
    """Say once, in a warning line, which classes a split has no sample of: its scores then say
    nothing of them (a class of one or two samples cannot reach all three splits)."""
    present = np.unique(np.concatenate(list(splits.values())))
    missing = []
    for split, targets in splits.items():
        lacking = np.setdiff1d(present, targets)
        if len(lacking):
            names = [repr(class_names[int(c)] if class_names else str(int(c))) for c in lacking[:3]]
            more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            missing.append(f"the {split} split has no sample of class {', '.join(names)}{more}")
    if missing:
        _say_once(f"warning: {source}: {'; '.join(missing)}; give those classes more samples")


@functools.cache
def _say_once(line: str) -> None:
    # On stdout with the run's other messages: stderr holds only the one line of an error.
    print(line)


def _empty_split(
    split: str, samples: int, val_fraction: float, test_fraction: float, source: str
) -> str:
    if split == "validation" and val_fraction == 0:
        return (
            "data.val_fraction=0 leaves no validation samples, and each model is scored and "
            "diagnosed on them: set data.val_fraction above 0 (e.g. 0.1)"
        )
    fraction = {
        "validation": f"data.val_fraction={val_fraction}",
        "test": f"data.test_fraction={test_fraction}",
    }.get(split, "what is left")
    return (
        f"{source}: {samples} sample(s) leave the {split} split "
        f"empty ({fraction}); use more samples or a larger fraction"
    )


def make_splits(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    identity: dict | None = None,
    source: str = "data",
    per_axis: int | None = None,
    rest: tuple[np.ndarray, np.ndarray] | None = None,
) -> DataSplits:
    """Stratified train/val/test split of arrays, standardised with the train split's statistics.

    ``x`` is float (N, ...) in its natural range; ``y`` integer (N,). The statistics are one
    mean and standard deviation over everything, or one per entry of axis ``per_axis`` (1: per
    image channel, per table column), recorded in ``identity["normalise"]``. ``rest``: inputs
    and labels outside the split (a bundled dataset's samples outside ``data.subset``),
    standardised alike; the inputs become ``unlabelled``, the labels ``rest_targets``.
    """
    rest, rest_targets = rest if rest is not None else (None, None)
    check_arrays(x, y, source)
    y = y.astype(np.int64)
    check_classes(y, class_names, source)
    num_classes = num_classes or int(y.max()) + 1
    if num_classes > MAX_CLASSES:
        raise DataError(
            f"{source}: {num_classes:,} classes, more than the limit of {MAX_CLASSES:,}"
        )
    if y.max() >= num_classes:
        raise DataError(f"{source}: label {int(y.max())} is out of range for {num_classes} classes")
    train_fraction = 1.0 - val_fraction - test_fraction
    train_idx, val_idx, test_idx = stratified_split(
        y, (train_fraction, val_fraction, test_fraction), seed
    )
    for split, idx in (("train", train_idx), ("validation", val_idx), ("test", test_idx)):
        if len(idx) == 0:
            raise DataError(_empty_split(split, len(y), val_fraction, test_fraction, source))
    parts = {"train": y[train_idx], "validation": y[val_idx], "test": y[test_idx]}
    warn_missing_classes(parts, class_names, source)
    # Statistics of the train split only (checked non-empty first: an empty one's are NaN, with
    # warnings): nothing about val/test leaks into training.
    if per_axis is None:
        mean = float(x[train_idx].mean())
        std = float(x[train_idx].std()) or 1.0
        x = ((x - mean) / std).astype(np.float32)
        if rest is not None:
            rest = ((rest - mean) / std).astype(np.float32)
    else:
        axes = tuple(a for a in range(x.ndim) if a != per_axis)
        mean_array = x[train_idx].mean(axis=axes, keepdims=True, dtype=np.float64)
        std_array = x[train_idx].std(axis=axes, keepdims=True, dtype=np.float64)
        std_array[std_array == 0] = 1.0  # a constant column or channel is centred, not divided by 0
        x = ((x - mean_array) / std_array).astype(np.float32)
        if rest is not None:
            rest = ((rest - mean_array) / std_array).astype(np.float32)
        mean, std = mean_array.ravel().tolist(), std_array.ravel().tolist()

    def subset(idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))

    return DataSplits(
        train=subset(train_idx),
        val=subset(val_idx),
        test=subset(test_idx),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        class_names=class_names or [str(c) for c in range(num_classes)],
        identity={
            **(identity or {}),
            "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
            "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "normalise": {"mean": mean, "std": std},
        },
        unlabelled=None if rest is None else torch.from_numpy(rest),
        rest_targets=None if rest_targets is None else torch.from_numpy(rest_targets),
    )
