"""The user's tables: a CSV or Parquet file of feature columns and one label column.

``data.dataset=table``, ``data.path=features.csv``, ``data.options.label=species`` (and
optionally ``data.options.features=[...]``, default every other column). Labels of any kind
(strings, numbers) are mapped to dense class indices in sorted order, recorded with the run
(``data.classes``); each feature column is standardised with the training split's statistics.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from kdistill.data.base import DataSplits, make_splits
from kdistill.data.images import stratified_subset
from kdistill.errors import DataError


def read_table(path: str | None, field: str = "data.path"):
    """A pandas DataFrame of a ``.csv`` / ``.tsv`` / ``.parquet`` / ``.jsonl`` file."""
    if not path:
        raise DataError(f"{field}: give the file, e.g. data.path=train.csv")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{field}: {file} does not exist")
    try:
        import pandas
    except ImportError:
        raise DataError("tables need pandas: pip install pandas") from None
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            return pandas.read_parquet(file)
        if suffix in (".jsonl", ".json"):
            # utf-8-sig: a byte-order mark (Windows editors write one) is read past, as pandas
            # does for a CSV, instead of failing as "expected object or value".
            with file.open(encoding="utf-8-sig") as handle:
                return pandas.read_json(handle, lines=suffix == ".jsonl", dtype=False)
        check_width(file, _separator(file))
        return pandas.read_csv(file, sep=_separator(file), dtype=str, keep_default_na=False)
    except ImportError as error:
        raise DataError(
            f"{file}: reading {suffix} files needs {error.name or 'pyarrow'}: pip install pyarrow"
        ) from None
    except (
        ValueError,
        OSError,
        UnicodeDecodeError,
    ) as error:  # pandas' ParserError is a ValueError
        detail = _parser_message(file, error)
        raise DataError(f"{file}: not a readable {suffix.lstrip('.')} table ({detail})") from None


# Columns a CSV may have: its cells become Python strings before they are numbers, and a header
# of 10^6 columns took pandas minutes before running out of memory. Wider data fits an .npz.
MAX_COLUMNS = 10_000


def _separator(file: Path) -> str:
    return "\t" if file.suffix.lower() == ".tsv" else ","


def check_width(file: Path, separator: str) -> None:
    """Refuse a CSV of more than ``MAX_COLUMNS`` columns from its header line alone."""
    with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline(MAX_COLUMNS * 64)  # a cut line still counts its columns
    columns = len(next(csv.reader([header], delimiter=separator), []))
    if columns > MAX_COLUMNS:
        counted = f"{columns:,} columns" + ("" if header.endswith("\n") else " or more")
        raise DataError(
            f"{file}: {counted}, more than the limit of {MAX_COLUMNS:,}; "
            "save wide data as arrays (np.savez(path, x=..., y=...), data.dataset=npz)"
        )


def _start_line(file: Path, record: int, *, count_blank: bool) -> int | None:
    """The line on which a CSV's ``record`` (0: the header) starts, as the csv module counts
    (``reader.line_num``): a quoted cell may hold newlines, so records and lines part after it.
    pandas numbers its rows without blank lines and its errors' "line N" with them."""
    try:
        with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle, delimiter=_separator(file))
            seen = -1
            while seen < record:
                start = reader.line_num + 1
                seen += bool(next(reader)) or count_blank
            return start
    except (csv.Error, StopIteration):  # e.g. a cell over the csv module's size limit
        return None


def _parser_message(file: Path, error: Exception) -> str:
    """pandas' first line of a parse error, its "line N" (records, not lines) made a line."""
    message = str(error).splitlines()[0][:200]
    if file.suffix.lower() not in (".csv", ".tsv"):
        return message

    def line(match: re.Match) -> str:
        start = _start_line(file, int(match.group(1)) - 1, count_blank=True)
        return f"line {start or match.group(1)}"

    return re.sub(r"line (\d+)", line, message, count=1)


def row_name(file: Path, position: int) -> str:
    """Where a row is in its file, as a user finds it: a CSV's line, a JSONL's line, a Parquet
    row index."""
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return f"{file}: line {_start_line(file, position + 1, count_blank=False) or position + 2}"
    if suffix == ".jsonl":
        return f"{file}: line {position + 1}"
    return f"{file}: row {position}"


def dense_labels(values, file: Path, column: str) -> tuple[np.ndarray, list[str]]:
    """Class indices 0..C-1 of a label column, in sorted order of the labels (numbers sorted as
    numbers); an empty label names its row."""
    texts = [str(v).strip() for v in values]
    empty = next((i for i, t in enumerate(texts) if t in ("", "nan", "None")), None)
    if empty is not None:
        raise DataError(f"{row_name(file, empty)}: empty label in column {column!r}")
    names = sorted(set(texts), key=lambda t: (0, float(t), t) if _is_number(t) else (1, 0.0, t))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[t] for t in texts], dtype=np.int64), names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_table(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    label: str | None = None,
    features: list[str] | None = None,
) -> DataSplits:
    """A CSV / Parquet table: numeric feature columns and a label column (``label``)."""
    frame = read_table(path)
    file = Path(path)
    if not label:
        raise DataError(
            f"data.options.label: name the label column of {file.name} (its columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    if label not in frame.columns:
        raise DataError(
            f"data.options.label: {file.name} has no column {label!r} (its columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    features = list(features) if features else [c for c in frame.columns if c != label]
    missing = [c for c in features if c not in frame.columns]
    if missing or not features:
        raise DataError(
            f"data.options.features: {file.name} has no column {missing[0]!r}"
            if missing
            else f"{file.name}: no feature columns besides {label!r}"
        )
    x = feature_matrix(frame, features, file)
    y, classes = dense_labels(frame[label].tolist(), file, label)
    x, y = stratified_subset(x, y, subset, seed)
    return make_splits(
        x,
        y,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=len(classes),
        class_names=classes,
        per_axis=1,
        source=str(file),
        identity={
            "dataset": "table",
            "file": str(file.resolve()),
            "subset": subset,
            "label": label,
            "features": features,
            "classes": {name: i for i, name in enumerate(classes)},
        },
    )


def feature_matrix(frame, features: list[str], file: Path) -> np.ndarray:
    """The ``features`` columns as float64 (N, F); a cell that is not a finite number names its
    row and column."""
    x = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, column in enumerate(features):
        for i, cell in enumerate(frame[column].tolist()):
            try:
                x[i, j] = float(cell)
            except (TypeError, ValueError):
                raise DataError(
                    f"{row_name(file, i)}: column {column!r} holds {str(cell)[:40]!r}, not a number"
                ) from None
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(
            f"{row_name(file, int(bad[0][0]))}: column "
            f"{features[bad[0][1]]!r} is empty, NaN or infinite"
        )
    return x


__all__ = ["dense_labels", "feature_matrix", "load_table", "read_table", "row_name"]
