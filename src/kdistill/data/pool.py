"""A transfer set larger than memory (``data.unlabelled: pool.npy``): the array is memory-mapped
from disk (``np.load(mmap_mode="r")``) and standardised as the training split was, row by row
as batches read it, so the pool is never copied whole; the teacher cache, on disk too, keeps
the teacher's outputs over it. A ``.npy`` file is the format NumPy maps (an ``.npz`` is a zip
archive, read whole)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.errors import DataError

CHUNK = 4096  # rows read at a time where the whole pool is scanned (the test-leak check)


def standardise(x: np.ndarray, normalise: dict) -> np.ndarray:
    """Raw inputs standardised with the training split's statistics (``identity["normalise"]``:
    one mean and std, or one per channel or column), as float32."""
    mean, std = normalise.get("mean"), normalise.get("std")
    if isinstance(mean, list):  # one per channel or column (make_splits' per_axis)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        try:
            x = (x - np.reshape(mean, shape)) / np.reshape(std, shape)
        except ValueError:
            pass  # the shapes disagree: the transfer set's shape check names them
    elif mean is not None:
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def map_npy(path: Path, field: str = "data.unlabelled") -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only (nothing read yet)."""
    if not path.is_file():
        raise DataError(f"{field}: {path} not found")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{field}: {path} is not a readable .npy array ({error})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{field}: {path} holds {array.dtype}, not numbers")
    if array.ndim < 2:
        raise DataError(
            f"{field}: {path} is one array of shape {array.shape}: give one row per sample"
        )
    return array


class MappedPool(Dataset):
    """Unlabelled inputs read from a memory-mapped array, standardised as they are read."""

    def __init__(self, array: np.ndarray, normalise: dict):
        self.array, self.normalise = array, normalise

    def __len__(self) -> int:
        return len(self.array)

    def rows(self, start: int, stop: int) -> Tensor:
        return torch.from_numpy(standardise(np.asarray(self.array[start:stop]), self.normalise))

    def take(self, positions: np.ndarray) -> Tensor:
        """The rows at ``positions``, in that order, standardised: one read of the map."""
        return torch.from_numpy(standardise(self.array[positions], self.normalise))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        i = int(i)
        return {"input": self.rows(i, i + 1)[0]}

    def chunks(self) -> Iterator[Tensor]:
        """Every row, standardised, ``CHUNK`` rows at a time."""
        for start in range(0, len(self), CHUNK):
            yield self.rows(start, start + CHUNK)
