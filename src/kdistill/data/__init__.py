"""Datasets by name. Each loader returns ``DataSplits`` whose samples carry their index."""

from __future__ import annotations

from collections.abc import Callable

from kdistill.data.base import ArrayDataset, DataSplits, make_splits, stratified_split
from kdistill.data.fashion import load_fashion_mnist
from kdistill.data.images import load_digits, load_image_folder, load_mnist
from kdistill.data.labelled_text import load_labelled_text
from kdistill.data.lm import load_text_corpus
from kdistill.data.movielens import load_movielens
from kdistill.data.npz import load_npz
from kdistill.data.shakespeare import load_plays
from kdistill.data.speech import load_spoken_digits
from kdistill.data.table import load_table
from kdistill.data.text import load_rotten_tomatoes
from kdistill.data.token_ids import load_token_ids
from kdistill.data.vowels import load_japanese_vowels
from kdistill.errors import DataError

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "npz": load_npz,
    "folder": load_image_folder,
    "spoken_digits": load_spoken_digits,
    "japanese_vowels": load_japanese_vowels,
    "movielens": load_movielens,
    "rotten_tomatoes": load_rotten_tomatoes,
    "text": load_text_corpus,
    "shakespeare": load_plays,
    "table": load_table,
    "labelled_text": load_labelled_text,
    "token_ids": load_token_ids,
}


def describe_dataset(name: str) -> str:
    doc = DATASETS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def load_dataset(name: str, **kwargs) -> DataSplits:
    """Load a dataset by name; keyword arguments go to its loader."""
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(
            f"data.dataset: unknown dataset {name!r}{hint}; choose from {', '.join(DATASETS)}"
        )
    return DATASETS[name](**kwargs)


__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataSplits",
    "describe_dataset",
    "load_dataset",
    "make_splits",
    "stratified_split",
]
