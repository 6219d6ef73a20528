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
from kdistill.data.images import IMAGE_SUFFIXES, MAX_FOLDER_BYTES, image_header, read_image
from kdistill.data.table import feature_matrix, read_table
from kdistill.errors import ConfigError, DataError

UNLABELLED = -1  # the target of a transfer-set sample: no class has it
REST = "rest"  # data.unlabelled: the bundled dataset's samples outside data.subset
REST_DATASETS = ("digits", "mnist")
TABLES = (".csv", ".tsv", ".jsonl", ".parquet")


def attach_transfer(spec: str, splits: DataSplits) -> None:
    """Set ``splits.unlabelled`` from ``data.unlabelled`` and check it (empty, another shape or
    kind than the labelled inputs, rows of the test split): a ``DataError`` naming the field."""
    if spec != REST:
        path = Path(spec)
        if path.is_dir():
            raw = _from_folder(path, splits)
        else:
            raw = _from_table(path, splits) if path.suffix.lower() in TABLES else _from_npz(path)
        splits.unlabelled = _standardised(raw, splits)
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


def _from_table(path: Path, splits: DataSplits) -> np.ndarray:
    """The labelled table's feature columns of a CSV / JSONL / Parquet file; its label column,
    if there, is ignored (said once)."""
    features, label = splits.identity.get("features"), splits.identity.get("label")
    if splits.identity.get("dataset") != "table" or not features:
        raise ConfigError(
            f"data.unlabelled: {path.name} is a table, and the labelled data is not "
            "(data.dataset=table): give an .npz with an array x"
        )
    frame = read_table(str(path), field="data.unlabelled")
    missing = [column for column in features if column not in frame.columns]
    if missing:
        raise DataError(
            f"data.unlabelled: {path} has no column {missing[0]!r}, a feature of the labelled table"
        )
    if label in frame.columns:
        print(f"data.unlabelled: {path} also holds the label column {label!r}: it is ignored")
    return feature_matrix(frame, features, path)


def _from_folder(root: Path, splits: DataSplits) -> np.ndarray:
    """The images directly in ``root`` (no class sub-folders), read as the labelled folder's
    were: its channels and its size (resized only where the labelled images were)."""
    identity = splits.identity
    if identity.get("dataset") != "folder":
        raise ConfigError(
            f"data.unlabelled: {root} is a folder of images, and the labelled data is not "
            "(data.dataset=folder): give an .npz with an array x"
        )
    files = sorted(file for file in root.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
    height, width = identity["image_size"]
    channels = identity["channels"]
    for file in files:
        _, size = image_header(file)  # bounds each image before a pixel is decoded
        if size != (width, height) and not identity["resized"]:
            raise DataError(
                f"data.unlabelled: {file} is {size[0]}×{size[1]} pixels, the labelled images "
                f"{width}×{height}: give images of their size, or set data.options.image_size"
            )
    needed = len(files) * channels * width * height * 4
    if needed > MAX_FOLDER_BYTES:
        raise DataError(
            f"data.unlabelled: {len(files):,} images take {needed:,} bytes as floats, more "
            f"than the limit of {MAX_FOLDER_BYTES:,}"
        )
    mode = "L" if channels == 1 else "RGB"
    if not files:
        return np.zeros((0, channels, height, width), dtype=np.float32)
    x = np.stack([read_image(file, mode, (width, height)) for file in files])
    return x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)


def _from_npz(path: Path) -> np.ndarray:
    """``x`` of an ``.npz`` in its natural range; a ``y`` there is ignored (said once)."""
    if path.suffix != ".npz":
        raise ConfigError(
            f"data.unlabelled: {str(path)!r} is neither {REST!r} (for {', '.join(REST_DATASETS)}), "
            f"a folder of images, a table ({', '.join(TABLES)}) nor an .npz file with an array x"
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
    return x


def _standardised(x: np.ndarray, splits: DataSplits) -> Tensor:
    """Raw inputs standardised as the training split was (``identity["normalise"]``)."""
    normalise = splits.identity.get("normalise", {})
    mean, std = normalise.get("mean"), normalise.get("std")
    if isinstance(mean, list):  # one per channel or column (make_splits' per_axis)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        try:
            x = (x - np.reshape(mean, shape)) / np.reshape(std, shape)
        except ValueError:
            pass  # the shapes disagree: attach_transfer's shape check names them
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
