"""What a PyTorch user already holds, turned into kdistill's samples.

kdistill reads every sample as ``{"input": x, "target": y, "index": i}`` (the index lets a
teacher cache or a memory bank find the sample again). ``as_dataset`` and ``as_loader`` accept
instead: NumPy arrays or tensors ``(x, y)``, a ``TensorDataset`` or any dataset of ``(x, y)``
tuples or of dicts, a ``DataLoader`` (its batches tuples or dicts, its sampler and collate
function kept), and Hugging Face ``datasets.Dataset`` objects (dict rows; the label column is
``label`` or ``labels``; one other column is the model's input, several are passed by keyword).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kdistill.data.base import ArrayDataset
from kdistill.errors import DataError

# Names a dict sample may give its parts (kdistill's own, then the common ones of PyTorch and
# Hugging Face code). Any other keys of a labelled dict are the model's keyword inputs.
INPUT_KEYS = ("input", "inputs", "x")
TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def _tensor(value, what: str):
    """A sample's part as a tensor. NumPy float64, the default of NumPy and pandas, is read as
    float32, PyTorch's default: a float64 model input would only fail inside the first layer."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, str) or (
        isinstance(value, (list, tuple)) and value and isinstance(value[0], str)
    ):
        raise DataError(
            f"{what} holds text ({str(value)[:40]!r}): "
            "tokenise it first (e.g. dataset.map(tokenizer))"
        )
    array = np.asarray(value)
    if array.dtype.kind in "USO":
        raise DataError(
            f"{what} holds text or objects (dtype "
            f"{array.dtype}): give numbers, or tokenise text first"
        )
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} is a {type(value).__name__} of dtype {array.dtype}: give numbers")
    return torch.from_numpy(array)


def as_sample(sample, position: int | None = None) -> dict:
    """One sample (or one batch) as ``{"input", "target"[, "index"]}``."""
    if isinstance(sample, Mapping):
        sample = dict(sample)
        target_key = next((k for k in TARGET_KEYS if k in sample), None)
        if target_key is None:
            raise DataError(
                f"a dict sample needs a label: one of the keys {', '.join(TARGET_KEYS)} (it has "
                f"{', '.join(map(str, sample))})"
            )
        target = sample.pop(target_key)
        input_key = next((k for k in INPUT_KEYS if k in sample), None)
        extra = {k: sample.pop(k) for k in ("index", "mask") if k in sample}
        if input_key is not None:
            inputs = sample.pop(input_key)
            inputs = (
                {k: _tensor(v, f"input {k!r}") for k, v in inputs.items()}
                if isinstance(inputs, Mapping)
                else _tensor(inputs, "the input")
            )
        elif len(sample) == 1:  # one column besides the label: the model's one input
            ((key, value),) = sample.items()
            inputs = _tensor(value, f"column {key!r}")
        else:  # keyword inputs of a Hugging Face model: input_ids, attention_mask, ...
            if not sample:
                raise DataError("a dict sample has a label but no input")
            inputs = {k: _tensor(v, f"column {k!r}") for k, v in sample.items()}
        out = {"input": inputs, "target": _tensor(target, "the label"), **extra}
    elif isinstance(sample, (tuple, list)) and len(sample) >= 2:
        out = {"input": _tensor(sample[0], "the input"), "target": _tensor(sample[1], "the label")}
    else:
        raise DataError(
            f"a sample is (input, target) or a dict with a label, got a {type(sample).__name__}; "
            "for unlabelled inputs pass (x, y) with any y"
        )
    if position is not None and "index" not in out:
        out["index"] = torch.tensor(position)
    return out


def _is_pair_of_lists(data) -> bool:
    pair = isinstance(data, tuple) and len(data) == 2
    return pair and all(isinstance(part, (list, tuple)) for part in data)


def class_labels(data, what: str):
    """``data`` with its labels as class indices, when it is ``(x, y)`` arrays, tensors or
    nested lists of numbers (other data is returned as it is, its batches checked as they come).

    A label is a whole number, one per sample: floats that are all whole (NumPy and pandas give
    them, e.g. after a column held a NaN) are taken as those integers, and a column vector
    ``(N, 1)`` as ``(N,)``; fractions, NaN, negative labels (-1 for "unlabelled" included) and
    no samples at all are refused with a ``DataError`` naming ``what`` (the argument) and the
    fix. Labels per position (``(N, L)``, token sequences, where -100 marks a position to skip)
    are left as they are: whether the models score positions is known once they have run."""
    if _is_pair_of_lists(data):
        try:
            data = tuple(np.asarray(part) for part in data)
        except ValueError:  # rows of different lengths
            raise DataError(
                f"{what}: x or y is a list of rows of different lengths; give rectangular arrays"
            ) from None
    if not _is_pair_of_arrays(data):
        return data
    x, y = data
    # Whole or not is decided on the labels as given: float64 -> float32 would round 2.0000001 to 2.
    is_float64 = isinstance(y, np.ndarray) and y.dtype == np.float64
    x, y = _tensor(x, f"{what}: x"), torch.from_numpy(y) if is_float64 else _tensor(y, f"{what}: y")
    if len(x) != len(y):
        raise DataError(f"{what}: x has {len(x)} samples but y has {len(y)}: they must match")
    if len(y) == 0:
        raise DataError(f"{what}: x and y hold no samples; give at least one labelled sample")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        return x, y
    if y.is_floating_point():
        whole = torch.isfinite(y) & (y == y.round())
        if not whole.all():
            bad = int((~whole).nonzero()[0])
            raise DataError(
                f"{what}: y[{bad}] is {y[bad].item()!r}, not a class index: labels are whole "
                "numbers 0, 1, 2, ..."
            )
    if y.min() < 0:
        bad = int((y < 0).nonzero()[0])
        raise DataError(
            f"{what}: y[{bad}] is {int(y[bad])}: labels are class indices 0, 1, 2, ...; drop the "
            "samples without a label (often marked -1) or give them their class"
        )
    return x, y.long()  # cross-entropy takes int64 class indices (not uint8, bool or float)


class IndexedDataset(Dataset):
    """Any map-style dataset of ``(x, y)`` tuples or dicts, as kdistill samples."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return as_sample(self.dataset[int(i)], i)


def _is_pair_of_arrays(data) -> bool:
    return (
        isinstance(data, Sequence)
        and not isinstance(data, str)
        and len(data) == 2
        and all(isinstance(part, (Tensor, np.ndarray)) for part in data)
    )


def as_dataset(data) -> Dataset:
    """``(x, y)`` arrays or tensors, or a dataset of ``(x, y)`` tuples or dicts (a Hugging Face
    ``datasets.Dataset`` too), as a dataset of kdistill samples."""
    if isinstance(data, (ArrayDataset, IndexedDataset)):
        return data
    if _is_pair_of_arrays(data):
        x, y = (_tensor(part, name) for part, name in zip(data, ("x", "y")))
        if len(x) != len(y):
            raise DataError(f"x has {len(x)} samples but y has {len(y)}: they must match")
        return ArrayDataset(x, y)
    if isinstance(data, DataLoader):
        raise DataError(
            "a DataLoader is not a dataset here: pass it where "
            "batches are read (train_data of distill or fit)"
        )
    if isinstance(data, IterableDataset) or not (
        hasattr(data, "__getitem__") and hasattr(data, "__len__")
    ):
        raise DataError(
            f"{type(data).__name__}: give (x, y) arrays, a "
            "dataset with __len__ and __getitem__, or a DataLoader"
        )
    if isinstance(data, Mapping):
        raise DataError("a dict is not a dataset: give (x, y) arrays, e.g. (data['x'], data['y'])")
    return IndexedDataset(data)


class _Positioned(Dataset):
    """The user's dataset, each sample paired with its position (for ``index``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return i, self.dataset[i]


class _Collate:
    """The user's collate function, then the batch as kdistill's dict with each sample's index."""

    def __init__(self, collate, positioned: bool):
        self.collate, self.positioned = collate, positioned

    def __call__(self, items):
        if not self.positioned:
            return as_sample(self.collate(items))
        batch = as_sample(self.collate([sample for _, sample in items]))
        batch.setdefault("index", torch.tensor([i for i, _ in items]))
        return batch


def as_loader(data, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A loader of kdistill batches. A ``DataLoader`` keeps its sampler, batch size, workers and
    collate function (its batches tuples or dicts); anything else goes through ``as_dataset``."""
    if not isinstance(data, DataLoader):
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            as_dataset(data),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
        )
    if (
        isinstance(data.dataset, (ArrayDataset, IndexedDataset))
        and data.collate_fn is torch.utils.data.default_collate
    ):
        return data  # already kdistill's samples
    positioned = not isinstance(data.dataset, IterableDataset)
    dataset = _Positioned(data.dataset) if positioned else data.dataset
    common = {
        "num_workers": data.num_workers,
        "collate_fn": _Collate(data.collate_fn, positioned),
        "pin_memory": data.pin_memory,
        "generator": data.generator,
    }
    if positioned and data.batch_size is None:  # a batch sampler of the user's
        return DataLoader(dataset, batch_sampler=data.batch_sampler, **common)
    sampler = data.sampler if positioned else None
    return DataLoader(
        dataset, batch_size=data.batch_size, sampler=sampler, drop_last=data.drop_last, **common
    )


__all__ = [
    "INPUT_KEYS",
    "TARGET_KEYS",
    "IndexedDataset",
    "as_dataset",
    "as_loader",
    "as_sample",
    "class_labels",
]
