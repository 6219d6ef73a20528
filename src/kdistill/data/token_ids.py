"""The user's language-model data as token ids: one integer array, already tokenised by their
tokenizer (``data.dataset=token_ids``, ``data.path=ids.npy`` or an ``.npz`` holding ``ids``).

The sequence is cut by position into train / validation / test (the fractions, in that order:
later text is held out, the usual split of one long corpus) and into next-token windows of
``block_size``. The vocabulary is ``data.options.vocab_size`` (the tokenizer's), or the largest
id plus one. The file is untrusted: an ``.npy`` is bounded by ``data.options.max_bytes`` from its
header before it is mapped, ``.npz`` arrays go through the same size checks as
``data.dataset=npz``, and pickled arrays are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kdistill.data.base import DataSplits
from kdistill.data.lm import SequenceDataset, windows_of
from kdistill.data.npz import MAX_NPZ_BYTES, npy_header, read_npz
from kdistill.errors import DataError

MAX_VOCABULARY = 1 << 20  # a stray id of 2e9 must not size the output layer


class IdCodec:
    """Ids shown as numbers (the report's sample continuations): no tokenizer is known here."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [int(token) for token in text.split()]

    def decode(self, ids) -> str:
        return "".join(f" {int(i)}" for i in ids)


def read_ids(file: Path, max_bytes: int = MAX_NPZ_BYTES) -> np.ndarray:
    """The 1-D integer array of an ``.npy``, or of an ``.npz`` member ``ids``."""
    if file.suffix == ".npz":
        ids = read_npz(file, ("ids",), max_bytes)["ids"]
    elif file.suffix == ".npy":
        if not file.is_file():
            raise DataError(f"data.path: {file} does not exist")
        try:
            with file.open("rb") as handle:
                shape, dtype = npy_header(handle, file.name, file)
                start = handle.tell()
            declared = math.prod(shape) * dtype.itemsize
            if start + declared > file.stat().st_size:
                raise DataError(
                    f"{file}: declares shape {shape} but holds fewer bytes (a damaged or forged "
                    "file)"
                )
            if declared > max_bytes:  # bounded as an .npz is, from the header, before mapping it
                raise DataError(
                    f"{file}: its array holds {declared:,} bytes, more than the limit of "
                    f"{max_bytes:,}; set data.options.max_bytes to allow it"
                )
            ids = np.load(
                file, mmap_mode="r", allow_pickle=False
            )  # mapped: read as the windows need it
        except ValueError as error:  # an object array (pickled) or a damaged header
            raise DataError(
                f"{file}: not an array of numbers ({str(error).splitlines()[0][:120]})"
            ) from None
    else:
        raise DataError(
            f"data.path: {file.name}; token ids come as an .npy array or an .npz holding 'ids'"
        )
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(
            f"{file}: token ids must be one sequence of integers, shape (N,); got {ids.dtype} "
            f"{ids.shape} (try ids.reshape(-1))"
        )
    return ids


def load_token_ids(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    block_size: int = 128,
    vocab_size: int | None = None,
    max_bytes: int = MAX_NPZ_BYTES,
) -> DataSplits:
    """Your own token ids (an .npy, or an .npz holding
    ids) as next-token windows, split by position."""
    if path is None:
        raise DataError("data.path: the .npy (or .npz with 'ids') of token ids to train on")
    file = Path(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DataError(f"data.options.max_bytes: give a number of bytes, got {max_bytes!r}")
    ids = read_ids(file, max_bytes)
    if block_size < 2:
        raise DataError(f"data.options.block_size: {block_size}; use at least 2")
    if len(ids) and ids.min() < 0:
        raise DataError(f"{file}: token ids must be >= 0, found {int(ids.min())}")
    largest = int(ids.max()) if len(ids) else 0
    if vocab_size is None:
        vocab_size = largest + 1
    elif largest >= vocab_size:
        raise DataError(f"{file}: id {largest} is outside data.options.vocab_size={vocab_size}")
    if not 2 <= vocab_size <= MAX_VOCABULARY:
        raise DataError(
            f"data.options.vocab_size: {vocab_size}; a vocabulary of 2 to {MAX_VOCABULARY:,} tokens"
        )
    ends = np.cumsum([1.0 - val_fraction - test_fraction, val_fraction, test_fraction]) * len(ids)
    bounds = [0, *(int(round(e)) for e in ends)]
    if min(b - a for a, b in zip(bounds, bounds[1:])) < 2:
        raise DataError(
            f"{file}: {len(ids):,} tokens leave a split with "
            "fewer than 2; give more tokens or larger fractions"
        )
    codec = IdCodec(vocab_size)
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    limits = [None] * 3 if subset is None else [max(1, round(f * subset)) for f in fractions]
    splits = [
        SequenceDataset(
            *windows_of(np.asarray(ids[a:b], dtype=np.int64).tolist(), block_size, limit), codec
        )
        for a, b, limit in zip(bounds, bounds[1:], limits)
    ]
    return DataSplits(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        num_classes=vocab_size,
        input_shape=(block_size,),
        task="language_modelling",
        identity={
            "dataset": "token_ids",
            "file": str(file.resolve()),
            "tokens": len(ids),
            "vocab_size": vocab_size,
            "block_size": block_size,
            "subset": subset,
            "split": {
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "by": "position",
            },
            "sizes": {k: len(s) for k, s in zip(("train", "val", "test"), splits)},
        },
    )


__all__ = ["IdCodec", "load_token_ids", "read_ids"]
