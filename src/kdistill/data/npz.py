"""The user's arrays: a NumPy ``.npz`` holding ``x`` (N, ...) and integer labels ``y`` (N,).

The file is untrusted input and is read as such. It is a zip archive of ``.npy`` members, so
before anything is decompressed or allocated: each member's declared uncompressed size is
summed against ``max_bytes`` (a 1 MB file of zeros can declare gigabytes), each ``.npy`` header's
shape must fit in the bytes the member declares (a 200-byte member can claim a terabyte array),
and object arrays are refused (unpickling would run code). Labels must be the dense class
indices ``0..K-1`` (or fit ``num_classes``), at most ``MAX_CLASSES``: one stray label of 2e9
would otherwise size every classifier head and confusion matrix.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from kdistill.data.base import MAX_CLASSES, DataSplits, check_arrays, make_splits
from kdistill.data.images import stratified_subset
from kdistill.errors import DataError

MAX_NPZ_BYTES = 2 * 2**30  # uncompressed x + y; data.options.max_bytes raises it deliberately
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def _member(archive: zipfile.ZipFile, name: str, file: Path) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(f"{name}.npy")
    except KeyError:
        found = sorted(n.removesuffix(".npy") for n in archive.namelist())
        raise DataError(
            f"{file}: needs arrays 'x' and 'y', missing {name!r} (found {found}); "
            "save with np.savez(path, x=..., y=...)"
        ) from None


def npy_header(handle, name: str, file: Path) -> tuple[tuple, np.dtype]:
    """Shape and dtype from the ``.npy`` header at the start of ``handle`` (nothing else read)."""
    fmt = np.lib.format
    version = fmt.read_magic(handle)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise DataError(f"{file}: {name} is .npy version {version}; save it again with np.save")
    shape, _, dtype = readers[version](handle)
    return shape, dtype


def read_npz(
    file: Path, names: tuple[str, ...] = ("x", "y"), max_bytes: int = MAX_NPZ_BYTES
) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz``, each checked
    against its declared sizes before it is read."""
    try:
        with zipfile.ZipFile(file) as archive:
            members = {name: _member(archive, name, file) for name in names}
            declared = sum(info.file_size for info in members.values())
            if declared > max_bytes:
                raise DataError(
                    f"{file}: its arrays decompress to {declared:,} bytes, more than the limit of "
                    f"{max_bytes:,}; set data.options.max_bytes to allow it"
                )
            arrays = {}
            for name, info in members.items():
                with archive.open(info) as handle:  # a few hundred bytes are decompressed
                    shape, dtype = npy_header(handle, info.filename, file)
                if dtype.hasobject:
                    raise DataError(
                        f"{file}: array {name!r} holds Python objects (pickled); save numbers only"
                    )
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise DataError(
                        f"{file}: array {name!r} declares shape {shape} "
                        "but holds fewer bytes (a damaged or forged file)"
                    )
                with archive.open(info) as handle:
                    arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
            return arrays
    except DataError:
        raise
    except MemoryError:
        raise DataError(
            f"{file}: its arrays do not fit in the memory "
            "available; use data.subset or a smaller file"
        ) from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
    ) as error:
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DataError(
            f"{file}: not a readable .npz file ({detail}); "
            "save it with np.savez(path, x=..., y=...)"
        ) from None


def check_shapes(x: np.ndarray, y: np.ndarray, file: Path) -> None:
    """Arrays a classifier can learn from: numbers, one label per sample, features per sample."""
    if x.dtype.kind not in NUMERIC_KINDS:
        raise DataError(
            f"{file}: x has dtype {x.dtype}; inputs must be numbers (bool, int or float)"
        )
    if y.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{file}: y has dtype {y.dtype}; labels must be integer class indices")
    if y.ndim != 1:
        raise DataError(
            f"{file}: y has shape {y.shape}; labels must be one "
            "class index per sample, shape (N,) (try y.reshape(-1))"
        )
    if x.ndim < 2:
        raise DataError(
            f"{file}: x has shape {x.shape}; inputs must be (N, "
            "features...), e.g. x.reshape(-1, 1) for one feature"
        )
    if 0 in x.shape[1:]:
        raise DataError(f"{file}: x has shape {x.shape}; every sample needs at least one value")


def class_count(y: np.ndarray, file: Path, num_classes: int | None) -> int:
    """K for labels ``y``: ``num_classes`` when given, else the labels must be exactly 0..K-1."""
    named = num_classes is not None
    if named and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 2 <= num_classes <= MAX_CLASSES
    ):
        raise DataError(
            "data.options.num_classes: give a whole number "
            f"from 2 to {MAX_CLASSES:,}, got {num_classes!r}"
        )
    bound = num_classes if named else MAX_CLASSES
    if len(y) and (y.min() < 0 or y.max() >= bound):
        raise DataError(
            f"{file}: labels must be class indices 0..{bound - 1}, found {y.min()}..{y.max()}"
        )
    if named:
        return num_classes
    present = np.unique(y.astype(np.int64))
    if len(present) != int(present[-1]) + 1:
        missing = sorted(set(range(int(present[-1]) + 1)) - set(present.tolist()))[:5]
        raise DataError(
            f"{file}: labels must be the dense class "
            f"indices 0..K-1, but {len(present)} classes are "
            f"present with the largest {int(present[-1])} "
            f"(missing e.g. {missing}); relabel them, or set "
            "data.options.num_classes when some classes have no samples"
        )
    return len(present)


def load_npz(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    num_classes: int | None = None,
    max_bytes: int = MAX_NPZ_BYTES,
) -> DataSplits:
    """The user's arrays: a NumPy ``.npz`` holding ``x`` (N, ...) and integer labels ``y`` (N,)."""
    if not path:
        raise DataError("data.path: the npz dataset needs a file; set data.path=my_data.npz")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: {file} does not exist")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DataError(f"data.options.max_bytes: give a number of bytes, got {max_bytes!r}")
    arrays = read_npz(file, max_bytes=max_bytes)
    x, y = arrays["x"], arrays["y"]
    check_shapes(x, y, file)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3:  # (N, H, W) grayscale images: add the channel axis
        x = x[:, None]
    x = x.astype(np.float32)
    check_arrays(x, y, str(file))
    classes = class_count(y, file, num_classes)
    x, y = stratified_subset(x, y.astype(np.int64), subset, seed)
    return make_splits(
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=classes,
        identity={"dataset": "npz", "file": str(file.resolve()), "subset": subset},
        source=str(file),
    )
