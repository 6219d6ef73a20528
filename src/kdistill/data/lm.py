"""Language-modelling data: English text cut into fixed-length character sequences.

Sources that need no download: the Python documentation topics that ship with every CPython
(``pydoc_data.topics``, ~465k characters of English prose and code), the Debian ``fortunes``
package (``/usr/share/games/fortunes``), or any UTF-8 text file. Documents (a pydoc topic, a
fortune file's entries, a paragraph) are assigned whole to train / validation / test with a
fixed seed, so no window of the test text was seen in training. Each split is then cut into
windows of ``block_size + 1`` characters: ``input`` = the first ``block_size``, ``target`` =
the next character at every position, ``mask`` false only at the padding of the last window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.data.base import DataSplits
from kdistill.errors import DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")


class CharCodec:
    """Characters ↔ ids; id ``i`` is the ``i``-th character of ``chars`` (sorted, so the codec
    is the same for the same text whatever order it was read in)."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.ids = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self.ids))
        if unknown:
            raise DataError(
                f"characters {''.join(unknown)!r} are not in "
                f"the {self.vocab_size}-character vocabulary"
            )
        return [self.ids[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class SequenceDataset(Dataset):
    """Next-token windows: ``{"input": (L,), "target": (L,), "mask": (L,), "index"}``, int64 ids."""

    def __init__(self, windows: Tensor, mask: Tensor, codec: CharCodec):
        self.windows, self.mask, self.codec = windows, mask, codec

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        window = self.windows[i]
        return {
            "input": window[:-1],
            "target": window[1:],
            "mask": self.mask[i],
            "index": torch.tensor(i),
        }


def pydoc_documents() -> list[str]:
    """The Python documentation topics of this interpreter, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def fortune_documents(directory: Path = FORTUNES_DIR) -> list[str]:
    """Every fortune of the Debian ``fortunes`` files (entries separated by ``%`` lines)."""
    if not directory.is_dir():
        raise DataError(
            f"{directory} not found: install the Debian package with apt-get install fortunes"
        )
    documents = []
    for file in sorted(directory.iterdir()):
        if file.suffix or file.is_dir():  # skip the .dat indexes and .u8 links
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        documents += [entry.strip("\n") for entry in text.split("\n%\n") if entry.strip()]
    return documents


def file_documents(path: Path) -> list[str]:
    """Paragraphs (blank-line separated) of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"data.path: cannot read {path} as UTF-8 text ({error})") from None
    return [p for p in text.split("\n\n") if p.strip()]


def split_documents(documents: list[str], fractions: tuple[float, ...], seed: int) -> list[str]:
    """Shuffle whole documents with ``seed`` and cut the sequence by characters at the
    cumulative fractions; each part is returned as one text."""
    order = np.random.default_rng(seed).permutation(len(documents))
    lengths = np.array([len(documents[i]) + 2 for i in order])
    ends = np.cumsum(lengths) / lengths.sum()
    cuts = np.cumsum(fractions)[:-1]
    part_of = np.searchsorted(
        cuts, ends - 0.5 * lengths / lengths.sum()
    )  # by each document's middle
    return [
        "\n\n".join(documents[i] for i, p in zip(order, part_of) if p == k)
        for k in range(len(fractions))
    ]


def windows_of(ids: list[int], block_size: int, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Consecutive windows of ``block_size + 1`` ids overlapping by one (every id is a target
    exactly once), the last padded with 0 and masked; at most ``limit`` windows."""
    count = max(1, -(-(len(ids) - 1) // block_size))
    if limit is not None:
        count = min(count, max(limit, 1))
    windows = torch.zeros(count, block_size + 1, dtype=torch.int64)
    mask = torch.zeros(count, block_size, dtype=torch.bool)
    data = torch.tensor(ids, dtype=torch.int64)
    for k in range(count):
        piece = data[k * block_size : k * block_size + block_size + 1]
        windows[k, : len(piece)] = piece
        mask[k, : max(len(piece) - 1, 0)] = True
    return windows, mask


def load_text_corpus(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    source: str = "pydoc",
    block_size: int = 128,
) -> DataSplits:
    """English text for language modelling, as characters: Python's documentation topics
    (``source: pydoc``), Debian fortunes (``fortunes``) or a text file (``data.path``).

    A fixed document-level split; ``subset`` caps the number of windows (quick runs).
    """
    if path is not None:
        documents, name = file_documents(Path(path)), Path(path).name
    elif source == "pydoc":
        documents, name = pydoc_documents(), "pydoc_data.topics"
    elif source == "fortunes":
        documents, name = fortune_documents(), str(FORTUNES_DIR)
    else:
        raise DataError(
            f"data.options.source: {source!r}; choose pydoc or fortunes, or set data.path"
        )
    if block_size < 2:
        raise DataError(f"data.options.block_size: {block_size}; use at least 2")
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    texts = split_documents(documents, fractions, seed)
    if any(not text for text in texts):
        raise DataError(f"{name}: too few documents ({len(documents)}) for a train/val/test split")
    codec = CharCodec("".join(texts))
    limits = [None] * 3 if subset is None else [max(1, round(f * subset)) for f in fractions]
    splits = [
        SequenceDataset(*windows_of(codec.encode(text), block_size, limit), codec)
        for text, limit in zip(texts, limits)
    ]
    return DataSplits(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        num_classes=codec.vocab_size,
        input_shape=(block_size,),
        class_names=list(codec.chars),
        task="language_modelling",
        identity={
            "dataset": "text",
            "source": name,
            "subset": subset,
            "level": "character",
            "vocab_size": codec.vocab_size,
            "block_size": block_size,
            "characters": {k: len(t) for k, t in zip(("train", "val", "test"), texts)},
            "split": {
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "by": "document",
            },
            "sizes": {k: len(s) for k, s in zip(("train", "val", "test"), splits)},
        },
    )
