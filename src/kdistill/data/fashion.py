"""Fashion-MNIST from its four IDX files, with the official 60,000 / 10,000 train / test split.

Xiao, Rasul, Vollgraf. "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747 (MIT licence). Debian and Ubuntu ship the files in the package
``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/``; any directory holding the
same four files (gzipped or not) works through ``path``.

IDX (LeCun's MNIST format): a big-endian header of two zero bytes, a type code, the number of
dimensions and one 32-bit size per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from kdistill.data.base import ArrayDataset, DataSplits, stratified_split
from kdistill.data.images import stratified_subset
from kdistill.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = (
    "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
    "IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each may end in .gz) in a directory and set data.path to it"
)
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # type code 0x08 (unsigned byte), 3 or 1 dimensions
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
FILE_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def read_idx(file: Path) -> tuple[int, np.ndarray]:
    """The magic number and the array of an IDX file, gzipped or not (told by its first bytes).

    Raises ``DataError`` naming the file when it is not IDX, or its size disagrees with its
    header (a truncated download, or bytes after the data).
    """
    try:
        raw = file.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{file}: cannot read it ({error}); the file is damaged or truncated, "
            "download or install it again"
        ) from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
        raise DataError(f"{file}: not an IDX file (header {raw[:4].hex() or 'empty'})")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{file}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[raw[2]]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{file}: {problem}: the header promises shape {shape} ({expected:,} bytes), "
            f"the file holds {len(raw):,} bytes; download or install it again"
        )
    return magic, np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_pair(root: Path, prefix: str, digest) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    images_file = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_file = _find(root, f"{prefix}-labels-idx1-ubyte")
    magic, images = read_idx(images_file)
    if magic != IMAGES_MAGIC:
        raise DataError(
            f"{images_file}: IDX magic number {magic}, expected {IMAGES_MAGIC} "
            "(unsigned-byte images, 3 dimensions)"
        )
    magic, labels = read_idx(labels_file)
    if magic != LABELS_MAGIC:
        raise DataError(
            f"{labels_file}: IDX magic number {magic}, expected {LABELS_MAGIC} "
            "(unsigned-byte labels, 1 dimension)"
        )
    digest.update(images)
    digest.update(labels)
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} holds {len(images)} images but {labels_file} "
            f"{len(labels)} labels; they must come from the same release"
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(
            f"{labels_file}: label {int(labels.max())} is not a Fashion-MNIST class "
            f"(0-{len(CLASS_NAMES) - 1})"
        )
    return images, labels.astype(np.int64), [images_file, labels_file]


def load_fashion_mnist(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    seed: int = 0,
    subset: int | None = None,
) -> DataSplits:
    """Fashion-MNIST, 70,000 clothing images in 10 classes, from its IDX files (official split).

    The test split is the official 10,000 test images (``test_fraction`` is ignored); the
    validation split is ``val_fraction`` of the 60,000 training images, stratified with ``seed``.
    ``subset`` keeps that many images in all, the same class-balanced fraction of each official
    file (so the test part still comes from the test file only). Inputs are (1, 28, 28),
    standardised with the train split's mean and standard deviation.
    """
    del test_fraction  # the official split fixes it; accepted so every recipe's data section works
    root = Path(path) if path else DEFAULT_DIR
    if root.is_file():
        raise DataError(
            f"data.path: {root} is a file; give the directory that holds the four "
            "Fashion-MNIST IDX files"
        )
    missing = [stem for stem in FILE_STEMS if _find(root, stem) is None]
    if len(missing) == len(FILE_STEMS):
        raise DataError(f"Fashion-MNIST not found in {root}: {HOW_TO_GET}")
    if missing:
        raise DataError(f"{root}: Fashion-MNIST file(s) {', '.join(missing)} missing; {HOW_TO_GET}")

    # A hash of the values (not of the files: gzipped or not, the data are the same) goes into
    # the identity, so a teacher trained on other files is never reused for these.
    digest = hashlib.sha256()
    train_images, train_labels, train_files = _read_pair(root, "train", digest)
    test_images, test_labels, test_files = _read_pair(root, "t10k", digest)
    if subset is not None:
        if subset < 2 * len(CLASS_NAMES):
            raise DataError(
                f"data.subset: {subset} is too small; Fashion-MNIST needs at least "
                f"{2 * len(CLASS_NAMES)} images (one per class in train and in test)"
            )
        # The official proportions, 6 train : 1 test (rounded), each part class-balanced.
        total = len(train_labels) + len(test_labels)
        test_count = max(len(CLASS_NAMES), round(subset * len(test_labels) / total))
        train_images, train_labels = stratified_subset(
            train_images, train_labels, subset - test_count, seed
        )
        test_images, test_labels = stratified_subset(test_images, test_labels, test_count, seed)

    train_idx, val_idx = stratified_split(train_labels, (1.0 - val_fraction, val_fraction), seed)
    # Statistics of the train split only (not validation, not test): nothing leaks into training.
    # From the histogram of the 256 pixel values: exact, and no float copy of 42M pixels.
    counts = np.bincount(train_images[train_idx].ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float(counts @ values / counts.sum())
    std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())) or 1.0

    def dataset(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
        x = (images.astype(np.float32) / 255.0 - mean) / std
        return ArrayDataset(torch.from_numpy(x[:, None]), torch.from_numpy(labels))

    files = train_files + test_files
    return DataSplits(
        train=dataset(train_images[train_idx], train_labels[train_idx]),
        val=dataset(train_images[val_idx], train_labels[val_idx]),
        test=dataset(test_images, test_labels),
        num_classes=len(CLASS_NAMES),
        input_shape=(1, *train_images.shape[1:]),
        class_names=list(CLASS_NAMES),
        identity={
            "dataset": "fashion_mnist",
            "files": [file.name for file in files],
            "sha256": digest.hexdigest()[:16],
            "subset": subset,
            "split": {"val_fraction": val_fraction, "seed": seed, "test": "official t10k files"},
            "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_labels)},
            "normalise": {"mean": mean, "std": std},
        },
    )


__all__ = ["load_fashion_mnist", "read_idx"]
