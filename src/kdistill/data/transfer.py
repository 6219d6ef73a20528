"""A transfer set (``data.unlabelled``): inputs without labels that the teacher scores and the
distilled student learns from through the terms that need no label (Hinton et al. 2015).

The distilled student trains on one dataset: the training split followed by the transfer set,
whose samples carry the target ``UNLABELLED``; a term that compares with the labels
(``Term.takes_target``: CE, DKD, ...) is a mean over the labelled samples of a batch only. The
scratch student and the teacher train on the training split alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdistill.data.base import ArrayDataset, DataSplits
from kdistill.errors import ConfigError, DataError

UNLABELLED = -1  # the target of a transfer-set sample: no class has it
REST = "rest"  # data.unlabelled: the bundled dataset's samples outside data.subset
REST_DATASETS = ("digits", "mnist")


def attach_transfer(spec: str, splits: DataSplits) -> None:
    """Set ``splits.unlabelled`` from ``data.unlabelled`` and check it (empty, another shape or
    kind than the labelled inputs, rows of the test split): a ``DataError`` naming the field."""
    if spec != REST:
        splits.unlabelled = _from_npz(Path(spec), splits)
    inputs = splits.unlabelled
    if inputs is None or len(inputs) == 0:
        why = "no samples are left outside data.subset" if spec == REST else "it holds no samples"
        raise DataError(f"data.unlabelled: the transfer set is empty ({why}); give it inputs")
    labelled = splits.train.inputs
    if inputs.dtype != labelled.dtype or tuple(inputs.shape[1:]) != tuple(labelled.shape[1:]):
        raise DataError(
            f"data.unlabelled: inputs of shape {tuple(inputs.shape[1:])} ({inputs.dtype}), but the "
            f"labelled data's are {tuple(labelled.shape[1:])} ({labelled.dtype}): give inputs "
            "of the same kind"
        )
    test = {_digest(row) for row in splits.test.inputs}
    leaks = sum(_digest(row) in test for row in inputs)
    if leaks:
        raise DataError(
            f"data.unlabelled: {leaks} sample(s) are identical to test samples, which would leak "
            "the test split into training: remove them from the transfer set"
        )


def _from_npz(path: Path, splits: DataSplits) -> Tensor:
    """``x`` of an ``.npz`` in its natural range, standardised as the training split was; a
    ``y`` there is ignored (said once)."""
    if path.suffix != ".npz":
        raise ConfigError(
            f"data.unlabelled: {str(path)!r} is neither {REST!r} (for {', '.join(REST_DATASETS)}) "
            "nor an .npz file with an array x"
        )
    if not path.is_file():
        raise DataError(f"data.unlabelled: {path} not found")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                names = ", ".join(arrays.files) or "none"
                raise DataError(f"data.unlabelled: {path} has no array 'x' (it has {names})")
            if "y" in arrays.files:
                print(f"data.unlabelled: {path} also holds labels 'y': they are ignored")
            x = arrays["x"]
    except (OSError, ValueError) as error:
        raise DataError(f"data.unlabelled: {path} is not a readable .npz ({error})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"data.unlabelled: {path}: x holds {x.dtype}, not numbers")
    normalise = splits.identity.get("normalise", {})
    mean, std = normalise.get("mean"), normalise.get("std")
    if isinstance(mean, list):  # one per channel or column (make_splits' per_axis)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        try:
            mean, std = np.reshape(mean, shape), np.reshape(std, shape)
            x = (x - mean) / std
        except ValueError:
            mean = None  # the shapes disagree: the shape check names them
    elif mean is not None:
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _digest(row: Tensor) -> bytes:
    return hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()


def with_transfer(train: ArrayDataset, inputs: Tensor) -> ArrayDataset:
    """The training split followed by the transfer set, whose targets are ``UNLABELLED``."""
    targets = torch.full((len(inputs),), UNLABELLED, dtype=train.targets.dtype)
    return ArrayDataset(torch.cat([train.inputs, inputs]), torch.cat([train.targets, targets]))


def labelled_mask(target: Tensor) -> Tensor:
    """Which samples of a batch carry a label."""
    return target != UNLABELLED
