"""The user's text classification data: a CSV / JSONL / Parquet file with a text column and a
label column (``data.dataset=labelled_text``, ``data.options.text=review``,
``data.options.label=sentiment``), tokenised by the teacher's tokenizer (``data.options.tokenizer``:
the teacher's local Hugging Face directory, or a ``tokenizer.json``), to ``max_length`` tokens; a
student with a tokenizer of its own names it in ``data.options.student_tokenizer`` (the batch then
carries both tokenisations of each text, each model reading its own).

Labels are mapped to dense class indices in sorted order, recorded with the run
(``data.classes``); an empty text or label names its file and row. A text is cut to
``CHARS_PER_TOKEN`` characters per token of ``max_length`` before it is tokenised: only its first
``max_length`` tokens are kept anyway, and a tokenizer handed one 50 MB cell whole ran out of
memory and aborted the process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.data.base import (
    DataSplits,
    check_classes,
    stratified_split,
    warn_missing_classes,
)
from kdistill.data.table import dense_labels, read_table, row_name
from kdistill.data.text import TokenDataset, encode, load_tokenizer
from kdistill.data.transfer import UNLABELLED
from kdistill.errors import DataError

# Characters a text may keep per token of max_length: no tokenizer we know spends more on one
# token (WordPiece makes one [UNK] of a word over 100 characters), so the cut keeps every token
# the model would read.
CHARS_PER_TOKEN = 100


def _encode(texts: list[str], tokenizer_path: str, max_length: int):
    """Token ids and attention masks (N, max_length): a Hugging Face directory through its own
    ``AutoTokenizer`` (its special tokens, as the teacher was trained with), a ``tokenizer.json``
    through ``tokenizers``. Local files only: nothing is downloaded."""
    path = Path(tokenizer_path)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError) as error:
            raise DataError(
                f"data.options.tokenizer: {path} ({str(error).splitlines()[0][:200]})"
            ) from None
        encoded = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return encoded["input_ids"].long(), encoded["attention_mask"].long()
    return encode(texts, load_tokenizer(path), max_length)


def load_labelled_text(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    text: str = "text",
    label: str = "label",
    tokenizer: str | None = None,
    max_length: int = 64,
    student_tokenizer: str | None = None,
    unlabelled: str | None = None,
) -> DataSplits:
    """Text classification from a CSV / JSONL / Parquet file, tokenised by the teacher's tokenizer,
    and with ``student_tokenizer`` also by the student's own: the students read those ids, the
    teacher its own (``kdistill.modeling.TEACHER_PREFIX``). ``unlabelled``
    (``data.unlabelled``): a transfer set of texts without labels, tokenised alike: a ``.txt``
    file of one text a line, or a table with the same text column (a label column there is
    ignored, said once)."""
    frame = read_table(path)
    file = Path(path)
    for option, column in (("text", text), ("label", label)):
        if column not in frame.columns:
            raise DataError(
                f"data.options.{option}: {file.name} has no column {column!r} (its columns: "
                f"{', '.join(map(str, frame.columns))})"
            )
    if not tokenizer:
        raise DataError(
            "data.options.tokenizer: the teacher's Hugging Face "
            "directory (or a tokenizer.json) to tokenise with"
        )
    if not isinstance(max_length, int) or max_length < 4:
        raise DataError(f"data.options.max_length: at least 4 tokens, got {max_length!r}")
    cut = max_length * CHARS_PER_TOKEN
    texts = [str(t)[:cut] if t is not None else "" for t in frame[text].tolist()]
    empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if empty is not None:
        raise DataError(f"{row_name(file, empty)}: empty text in column {text!r}")
    labels, classes = dense_labels(frame[label].tolist(), file, label)
    check_classes(labels, classes, str(file))
    if subset is not None and subset < len(labels):
        keep, _ = stratified_split(labels, (subset / len(labels), 1 - subset / len(labels)), seed)
        texts, labels = [texts[i] for i in keep], labels[keep]
    ids, attention = _encode(texts, tokenizer, max_length)
    teacher = None
    if student_tokenizer:  # the students read their own ids; the teacher keeps its own beside them
        teacher = (ids, attention)
        ids, attention = _encode(texts, student_tokenizer, max_length)
    targets = torch.from_numpy(labels)
    parts = stratified_split(
        labels, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), seed
    )
    datasets = [
        TokenDataset(
            ids[idx],
            attention[idx],
            targets[idx],
            None if teacher is None else (teacher[0][idx], teacher[1][idx]),
        )
        for idx in map(torch.from_numpy, parts)
    ]
    if min(len(d) for d in datasets) == 0:
        raise DataError(
            f"{file}: {len(labels)} rows leave an empty split; use more rows or larger fractions"
        )
    split_labels = dict(zip(("train", "validation", "test"), (labels[idx] for idx in parts)))
    warn_missing_classes(split_labels, classes, str(file))
    pool = None
    if unlabelled is not None:
        pool_texts = [t[:cut] for t in unlabelled_texts(Path(unlabelled), text, label)]
        tested = {texts[i] for i in parts[2]}
        leaks = sum(t in tested for t in pool_texts)
        if leaks:
            raise DataError(
                f"data.unlabelled: {leaks} text(s) are identical to test texts, which would leak "
                "the test split into training: remove them from the transfer set"
            )
        pool_ids, pool_attention = (
            _encode(pool_texts, tokenizer, max_length)
            if pool_texts
            else (
                ids[:0],
                attention[:0],
            )
        )
        pool_teacher = None
        if student_tokenizer and pool_texts:
            pool_teacher = (pool_ids, pool_attention)
            pool_ids, pool_attention = _encode(pool_texts, student_tokenizer, max_length)
        nothing = torch.full((len(pool_ids),), UNLABELLED, dtype=torch.int64)
        pool = TokenDataset(pool_ids, pool_attention, nothing, pool_teacher)
    return DataSplits(
        train=datasets[0],
        val=datasets[1],
        test=datasets[2],
        num_classes=len(classes),
        input_shape=(max_length,),
        class_names=classes,
        task="classification",
        teacher_inputs=teacher is not None,
        identity={
            "dataset": "labelled_text",
            "file": str(file.resolve()),
            "text": text,
            "label": label,
            "tokenizer": str(tokenizer),
            "max_length": max_length,
            "subset": subset,
            **({"student_tokenizer": str(student_tokenizer)} if student_tokenizer else {}),
            "classes": {name: i for i, name in enumerate(classes)},
            "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
            "sizes": {"train": len(datasets[0]), "val": len(datasets[1]), "test": len(datasets[2])},
        },
        unlabelled=pool,
    )


def unlabelled_texts(path: Path, text: str, label: str) -> list[str]:
    """The texts of a transfer set: a ``.txt`` file's non-empty lines, or a table's ``text``
    column (its ``label`` column, if any, ignored and said once)."""
    if not path.is_file():
        raise DataError(f"data.unlabelled: {path} not found")
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"data.unlabelled: {path} is not readable text ({error})") from None
        return [line for line in lines if line.strip()]
    frame = read_table(str(path))
    if text not in frame.columns:
        raise DataError(
            f"data.unlabelled: {path.name} has no text column {text!r} (its columns: "
            f"{', '.join(map(str, frame.columns))}); give the labelled data's text column"
        )
    if label in frame.columns:
        print(f"data.unlabelled: {path} also holds labels {label!r}: they are ignored")
    return [str(t) for t in frame[text].tolist() if t is not None and str(t).strip()]


__all__ = ["load_labelled_text"]
