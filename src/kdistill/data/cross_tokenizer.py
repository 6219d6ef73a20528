"""Language-modelling windows for a student with a tokenizer of its own.

The text is tokenised twice, by the student's tokenizer and by the teacher's. Windows are cut
in the student's tokens (``block_size + 1`` of them, as ``kdistill.data.lm.windows_of``); the
teacher reads its own tokens of the same bytes (those of its tokenisation of the whole text
that lie inside the window), padded at the end to the longest such run. Each sample carries,
beside the student's ``input_ids``, the teacher's ``teacher_input_ids`` and ``teacher_target``
and the chunk of every target token on both sides (``teacher_chunk``,
``teacher_student_chunk``; ``kdistill.data.alignment``), which
``kdistill.teachers.cross_tokenizer.CrossTokenizerTeacher`` hands to the losses.
"""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdistill.data.alignment import UNALIGNED, align_spans, aligned_bytes, encode_with_spans
from kdistill.data.base import DataSplits
from kdistill.errors import DataError
from kdistill.modeling import TEACHER_PREFIX

DEFAULT_MIN_ALIGNED = 0.5  # below it, most of the text would teach nothing: a wrong pairing


class CrossTokenizerDataset(Dataset):
    """Student windows with the teacher's tokens and the alignment; see the module docstring.

    Each sample's ``bytes`` and ``teacher_bytes``: the UTF-8 bytes of each target token on
    either side (0 for padding), for bits per byte (a tokenizer-independent score,
    ``kdistill.evaluation.language_model``). ``teacher_tokenizer``: the teacher's, for the
    tokens both vocabularies share (``kdistill.teachers.cross_tokenizer.aligned_teacher``).
    ``text``: the teacher's tokenisation of the whole text the windows come from, for a cache
    that any student tokenizer can read (``kdistill.teachers.text_cache``); each sample's
    ``teacher_start`` is the position of its first teacher token in it.
    """

    def __init__(
        self,
        student: dict[str, Tensor],
        teacher: dict[str, Tensor],
        codec,
        teacher_tokenizer=None,
        text: TeacherText | None = None,
    ):
        self.student, self.teacher, self.codec = student, teacher, codec
        self.teacher_tokenizer, self.text = teacher_tokenizer, text

    def __len__(self) -> int:
        return len(self.student["input_ids"])

    def __getitem__(self, i: int) -> dict:
        inputs = {"input_ids": self.student["input_ids"][i]}
        for key in ("input_ids", "target", "chunk", "student_chunk"):
            inputs[f"{TEACHER_PREFIX}{key}"] = self.teacher[key][i]
        return {
            "input": inputs,
            "target": self.student["target"][i],
            "mask": self.student["mask"][i],
            "index": torch.tensor(i),
            "teacher_start": self.teacher["start"][i],
            "bytes": self.student["bytes"][i],
            "teacher_bytes": self.teacher["bytes"][i],
        }


@dataclass(frozen=True)
class TeacherText:
    """The teacher's tokens of a whole text: ``ids`` (N,) int64, each token's byte ``spans``
    (N, 2) int64 ([start, end) in the UTF-8 text), and the text's SHA-256 ``digest``."""

    ids: Tensor
    spans: Tensor
    digest: str


def _windows(count: int, block_size: int, limit: int | None) -> list[int]:
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({round(k * (count - 1) / max(limit - 1, 1)) for k in range(limit)})


def cross_tokenizer_windows(
    text: str,
    student_tokenizer,
    teacher_tokenizer,
    block_size: int,
    *,
    limit: int | None = None,
    min_aligned: float = DEFAULT_MIN_ALIGNED,
    codec=None,
) -> tuple[CrossTokenizerDataset, dict]:
    """Windows of ``text`` in the student's tokens with the teacher's beside them.

    ``limit``: at most that many windows, evenly spaced. Returns the data set and its
    statistics (tokens on each side, the share of the student's target bytes aligned).
    Raises ``DataError`` when a tokenizer cannot give the text back, or when the alignment
    covers less than ``min_aligned`` of the bytes.
    """
    s_ids, s_spans = encode_with_spans(student_tokenizer, text, field="student_tokenizer")
    t_ids, t_spans = encode_with_spans(teacher_tokenizer, text, field="tokenizer")
    t_starts, t_ends = [s for s, _ in t_spans], [e for _, e in t_spans]
    count = max(1, -(-(len(s_ids) - 1) // block_size))
    rows = []
    for k in _windows(count, block_size, limit):
        first, last = k * block_size, min(k * block_size + block_size + 1, len(s_ids))
        begin, end = s_spans[first][0], s_spans[last - 1][1]
        a, b = bisect_left(t_starts, begin), bisect_right(t_ends, end)
        teacher_chunk, student_chunk = align_spans(t_spans[a + 1 : b], s_spans[first + 1 : last])
        rows.append((first, last, a, b, teacher_chunk, student_chunk))
    teacher_length = max(max(b - a - 1 for _, _, a, b, _, _ in rows), 1)

    def blank(length, fill=0):
        return torch.full((len(rows), length), fill, dtype=torch.int64)

    student = {"input_ids": blank(block_size), "target": blank(block_size)}
    student["mask"] = torch.zeros(len(rows), block_size, dtype=torch.bool)
    student["bytes"], student["student_chunk"] = blank(block_size), blank(block_size, UNALIGNED)
    teacher = {k: blank(teacher_length) for k in ("input_ids", "target", "bytes")}
    teacher["chunk"] = blank(teacher_length, UNALIGNED)
    teacher["start"] = torch.tensor([a for _, _, a, _, _, _ in rows], dtype=torch.int64)
    aligned = total = 0
    for row, (first, last, a, b, teacher_chunk, student_chunk) in enumerate(rows):
        n, m = last - first - 1, b - a - 1
        window = torch.tensor(s_ids[first:last])
        student["input_ids"][row, :n], student["target"][row, :n] = window[:-1], window[1:]
        student["mask"][row, :n] = True
        student["student_chunk"][row, :n] = torch.tensor(student_chunk, dtype=torch.int64)
        student["bytes"][row, :n] = torch.tensor([e - s for s, e in s_spans[first + 1 : last]])
        if m > 0:
            run = torch.tensor(t_ids[a:b])
            teacher["input_ids"][row, :m], teacher["target"][row, :m] = run[:-1], run[1:]
            teacher["chunk"][row, :m] = torch.tensor(teacher_chunk, dtype=torch.int64)
            teacher["bytes"][row, :m] = torch.tensor([e - s for s, e in t_spans[a + 1 : b]])
        aligned += aligned_bytes(s_spans[first + 1 : last], student_chunk)
        total += sum(e - s for s, e in s_spans[first + 1 : last])
    share = aligned / max(total, 1)
    if share < min_aligned:
        raise DataError(
            f"data.options.student_tokenizer: the alignment covers {share:.0%} of the text's bytes "
            f"(the least allowed is data.options.min_aligned={min_aligned:g}); the two "
            "tokenizers split the text too differently: use lossless tokenizers of the same text "
            "(byte-level BPE), or lower min_aligned if that is intended"
        )
    teacher["student_chunk"] = student.pop("student_chunk")
    stats = {
        "student_tokens": len(s_ids),
        "teacher_tokens": len(t_ids),
        "windows": len(rows),
        "aligned_bytes": share,
    }
    whole = TeacherText(
        torch.tensor(t_ids, dtype=torch.int64),
        torch.tensor(t_spans, dtype=torch.int64).reshape(-1, 2),
        hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
    return CrossTokenizerDataset(student, teacher, codec, teacher_tokenizer, whole), stats


def train_bpe(text: str, vocab_size: int, file: Path | None = None):
    """A byte-level BPE of ``vocab_size`` entries trained on ``text`` (paragraph by paragraph)
    with the ``tokenizers`` library, saved to ``file`` when given: lossless on any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(file))
    return tokenizer


BPE_PREFIX = "bpe:"  # data.options.student_tokenizer: bpe:8192 trains one on the training text


def student_tokenizer_for(spec: str, train_text: str):
    """The student's tokenizer: a ``tokenizer.json`` (or a directory holding one), or
    ``bpe:<size>``, a byte-level BPE trained on the training text, kept under
    ``$KDISTILL_HOME/tokenizers`` (``~/.cache/kdistill``) by the text's and size's hash.
    Returns the tokenizer and the file it is in."""
    from tokenizers import Tokenizer

    if spec.startswith(BPE_PREFIX):
        size = spec.removeprefix(BPE_PREFIX)
        if not size.isdigit() or not 256 < int(size) <= 1_000_000:
            raise DataError(
                f"data.options.student_tokenizer: {spec!r}; bpe:<entries>, 257 to 1,000,000"
            )
        digest = hashlib.sha256(f"{size}\0{train_text}".encode()).hexdigest()[:16]
        home = Path(os.environ.get("KDISTILL_HOME") or Path.home() / ".cache" / "kdistill")
        file = home / "tokenizers" / f"bpe-{size}-{digest}.json"
        if not file.is_file():
            train_bpe(train_text, int(size), file)
        return Tokenizer.from_file(str(file)), file
    file = Path(spec)
    file = file / "tokenizer.json" if file.is_dir() else file
    if not file.is_file():
        raise DataError(
            f"data.options.student_tokenizer: {spec} is not a tokenizer.json file (or use "
            f"{BPE_PREFIX}8192 to train a byte-level BPE on the training text)"
        )
    try:
        return Tokenizer.from_file(str(file)), file
    except Exception as error:  # tokenizers raises its own Exception type for a bad file
        raise DataError(f"data.options.student_tokenizer: {file}: {error}") from None


def cross_tokenizer_splits(
    texts: dict[str, str],
    teacher_codec,
    student_tokenizer: str,
    block_size: int,
    *,
    budgets: dict[str, int | None],
    min_aligned: float = DEFAULT_MIN_ALIGNED,
    identity: dict,
) -> DataSplits:
    """Train / val / test ``CrossTokenizerDataset``s of ``texts``, the student's tokenizer
    named by ``student_tokenizer`` (see ``student_tokenizer_for``), the teacher's in
    ``teacher_codec`` (the student's is wrapped in the same codec type); ``budgets``: windows
    per split (None: all)."""
    tokenizer, file = student_tokenizer_for(student_tokenizer, texts["train"])
    codec = type(teacher_codec)(tokenizer, str(file))
    made = {
        split: cross_tokenizer_windows(
            text,
            tokenizer,
            teacher_codec.tokenizer,
            block_size,
            limit=budgets.get(split),
            min_aligned=min_aligned,
            codec=codec,
        )
        for split, text in texts.items()
    }
    return DataSplits(
        train=made["train"][0],
        val=made["val"][0],
        test=made["test"][0],
        num_classes=codec.vocab_size,
        input_shape=(block_size,),
        task="language_modelling",
        teacher_inputs=True,
        identity={
            **identity,
            "student_tokenizer": str(file),
            "vocab_size": codec.vocab_size,
            "teacher_vocab_size": teacher_codec.vocab_size,
            # the teacher's windows: its tokens of the students' windows' bytes, the longest
            "teacher_input_shape": [max(len(d.teacher["input_ids"][0]) for d, _ in made.values())],
            "alignment": {split: stats for split, (_, stats) in made.items()},
            "sizes": {split: len(data) for split, (data, _) in made.items()},
        },
    )


__all__ = [
    "BPE_PREFIX",
    "DEFAULT_MIN_ALIGNED",
    "CrossTokenizerDataset",
    "TeacherText",
    "cross_tokenizer_splits",
    "cross_tokenizer_windows",
    "student_tokenizer_for",
    "train_bpe",
]
