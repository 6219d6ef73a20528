"""JapaneseVowels: nine male speakers saying the Japanese vowel /ae/, as 12 LPC cepstrum
coefficients per frame (7 to 29 frames); the task is to tell the speaker.

Kudo, Toyama, Shimbo, "Multidimensional curve classification using passing-through regions",
Pattern Recognition Letters 20 (11-13), 1999; UCI Machine Learning Repository. The ``.ts`` files
ship in the ``sktime==1.2.0`` wheel; they are read here as text, without importing sktime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdistill.data.base import ArrayDataset, DataSplits, stratified_split
from kdistill.data.images import _package_dir, stratified_subset
from kdistill.errors import DataError

INSTALL_HINT = "install it with: pip install --no-deps sktime==1.2.0"


def read_ts(file: Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """A multivariate sktime/UEA ``.ts`` file: sequences (T_i, D), integer labels, class names.

    Each data line is ``dim_1:dim_2:...:dim_D:label`` with comma-separated values per dimension.
    """
    sequences, labels, classes = [], [], []
    in_data = False
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{file}: cannot read the .ts file ({error})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@classlabel"):
            classes = line.split()[2:]
        elif line.lower() == "@data":
            in_data = True
        elif in_data:
            *dims, label = line.split(":")
            try:
                values = [
                    np.array([float(v) for v in dim.split(",")], dtype=np.float32) for dim in dims
                ]
            except ValueError:
                raise DataError(
                    f"{file}:{number}: a value is not a number (missing values are not supported)"
                ) from None
            if len({len(v) for v in values}) != 1:
                raise DataError(f"{file}:{number}: dimensions of one series have different lengths")
            sequences.append(np.stack(values, axis=1))
            labels.append(label)
    if not sequences:
        raise DataError(f"{file}: no series after @data")
    classes = classes or sorted(set(labels))
    unknown = set(labels) - set(classes)
    if unknown:
        raise DataError(f"{file}: labels {sorted(unknown)} are not in @classLabel {classes}")
    return sequences, np.array([classes.index(label) for label in labels]), classes


def pad_sequences(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """(N, length, D): each series cropped or padded at the end with zeros."""
    out = np.zeros((len(sequences), length, sequences[0].shape[1]), dtype=np.float32)
    for i, seq in enumerate(sequences):
        out[i, : min(len(seq), length)] = seq[:length]
    return out


def load_japanese_vowels(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    length: int = 29,
) -> DataSplits:
    """JapaneseVowels (UCI): 640 utterances, 12 LPC coefficients per frame, 9 speakers to tell
    apart.

    The published split is kept: 270 training utterances (30 per speaker), 370 test utterances
    recorded later; ``val_fraction`` of the training file (stratified by speaker, ``seed``) is
    held out for validation and ``test_fraction`` is unused. Inputs are (``length``, 12): each
    coefficient standardised with the statistics of the real training frames, then zero-padded
    at the end (zero is the training mean). ``path``: the folder holding the two ``.ts`` files.
    ``subset`` keeps about that many utterances, class-balanced, in the published proportions.
    """
    if path is None:
        root = _package_dir("sktime", INSTALL_HINT) / "datasets" / "data" / "JapaneseVowels"
    else:
        root = Path(path)
    files = [root / f"JapaneseVowels_{part}.ts" for part in ("TRAIN", "TEST")]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: JapaneseVowels file not found; {INSTALL_HINT}")
    (train_seqs, train_y, classes), (test_seqs, test_y, _) = (read_ts(file) for file in files)
    if subset is not None:
        share = subset / (len(train_y) + len(test_y))
        train_seqs, train_y = _subset(train_seqs, train_y, round(share * len(train_y)), seed)
        test_seqs, test_y = _subset(test_seqs, test_y, round(share * len(test_y)), seed)

    frames = np.concatenate(train_seqs)
    mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-6
    train_x = pad_sequences([(s - mean) / std for s in train_seqs], length)
    test_x = pad_sequences([(s - mean) / std for s in test_seqs], length)
    if val_fraction > 0:
        fit_idx, val_idx = stratified_split(train_y, (1.0 - val_fraction, val_fraction), seed)
    else:
        fit_idx, val_idx = np.arange(len(train_y)), np.array([], dtype=np.int64)

    def dataset(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

    return DataSplits(
        train=dataset(train_x[fit_idx], train_y[fit_idx]),
        val=dataset(train_x[val_idx], train_y[val_idx]),
        test=dataset(test_x, test_y),
        num_classes=len(classes),
        input_shape=(length, train_x.shape[2]),
        class_names=[f"speaker {c}" for c in classes],
        identity={
            "dataset": "japanese_vowels",
            "files": [f.name for f in files],
            "subset": subset,
            "split": {
                "by": "published train/test files",
                "val_fraction": val_fraction,
                "seed": seed,
            },
            "sizes": {"train": len(fit_idx), "val": len(val_idx), "test": len(test_y)},
            "normalise": "per coefficient, train frames",
            "length": length,
        },
    )


def _subset(seqs: list[np.ndarray], y: np.ndarray, n: int, seed: int):
    index, picked_y = stratified_subset(np.arange(len(y)), y, n, seed)
    return [seqs[i] for i in index], picked_y
