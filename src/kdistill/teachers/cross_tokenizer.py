"""A teacher whose tokenizer is not the student's.

``CrossTokenizerTeacher`` runs the teacher on its own tokens of the batch's text (the
``teacher_*`` inputs a cross-tokenizer data set carries beside the student's) and returns an
``AlignedTeacher``: its logits with the byte-offset alignment of the two tokenisations, which
the losses of ``kdistill.losses.cross_tokenizer`` read. ``shared_vocabulary`` maps the tokens
whose strings match exactly (the ``hybrid`` loss), and ``trim_padded_vocabularies`` handles the
one case where no alignment is needed: the same tokenizer under logit matrices padded to
different row counts (151,936 vs 152,064 rows for one 151,665-token vocabulary, say).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from kdistill.data.alignment import byte_decoder, is_byte_level
from kdistill.distiller import Teacher
from kdistill.losses.cross_tokenizer import AlignedTeacher
from kdistill.losses.sparse import SparseTeacher
from kdistill.modeling import (
    ALIGNMENT_KEYS,
    READS_ALIGNMENT,
    READS_TEACHER_INPUTS,
    TEACHER_PREFIX,
    ModelOutput,
    call_model,
)
from kdistill.teachers.vocab import map_teacher_vocabulary

log = logging.getLogger(__name__)


def token_strings(tokenizer) -> list[bytes]:
    """Each token's text as bytes (byte-level vocabularies decoded to their bytes); special
    tokens as their written form."""
    table = byte_decoder() if is_byte_level(tokenizer) else None
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    strings = []
    for i in range(tokenizer.get_vocab_size()):
        token = tokenizer.id_to_token(i) or ""
        if table is None or i in special or any(c not in table for c in token):
            strings.append(token.encode("utf-8"))
        else:
            strings.append(bytes(table[c] for c in token))
    return strings


def shared_vocabulary(teacher_tokenizer, student_tokenizer, teacher_rows: int | None = None):
    """(V_T,) int64: the student id of each teacher token whose string is exactly a student
    token's, -1 for the rest (and for padding rows beyond the tokenizer's vocabulary)."""
    student = {s: i for i, s in enumerate(token_strings(student_tokenizer))}
    teacher = token_strings(teacher_tokenizer)
    shared = torch.full((max(teacher_rows or 0, len(teacher)),), -1, dtype=torch.int64)
    for i, string in enumerate(teacher):
        shared[i] = student.get(string, -1)
    return shared


def vocabulary_projection(teacher_tokenizer, student_tokenizer, teacher_rows: int | None = None):
    """(V_T,) int64: the student token each teacher token's string starts with, for the
    ``projected`` loss: the same string where the student's vocabulary has it, else the first
    token of the student's tokenisation of the string (the longest student entry it starts
    with, for a piece of a UTF-8 character); -1 for special tokens and padding rows.
    Built once, offline, from the two tokenizers (after X-Token, arXiv:2605.21699)."""
    student = {s: i for i, s in enumerate(token_strings(student_tokenizer))}
    teacher = token_strings(teacher_tokenizer)
    special = {i for i, t in teacher_tokenizer.get_added_tokens_decoder().items() if t.special}
    projection = torch.full((max(teacher_rows or 0, len(teacher)),), -1, dtype=torch.int64)
    texts = {}
    for i, string in enumerate(teacher):
        if i in special or not string:
            continue
        if string in student:
            projection[i] = student[string]
            continue
        try:
            texts[i] = string.decode("utf-8")
        except UnicodeDecodeError:  # a piece of a character: its longest prefix the student has
            ends = (k for k in range(len(string), 0, -1) if string[:k] in student)
            projection[i] = student.get(string[: next(ends, 0)], -1)
    encoded = student_tokenizer.encode_batch(list(texts.values()), add_special_tokens=False)
    for i, encoding in zip(texts, encoded):
        projection[i] = encoding.ids[0] if encoding.ids else -1
    return projection


class CrossTokenizerTeacher(nn.Module):
    """The teacher model, reading its own tokens of the batch and returning an
    ``AlignedTeacher`` (its logits plus the alignment the batch carries).

    Args:
        teacher: the teacher model (any model ``call_model`` can run on ``input_ids``).
        shared: ``shared_vocabulary`` of the two tokenizers, for the ``hybrid`` loss.
        projection: ``vocabulary_projection`` of the two, for the ``projected`` loss.
    """

    def __init__(
        self, teacher: nn.Module, shared: Tensor | None = None, projection: Tensor | None = None
    ):
        super().__init__()
        self.teacher = teacher
        self.register_buffer("shared", shared, persistent=False)
        self.register_buffer("projection", projection, persistent=False)
        setattr(self, READS_TEACHER_INPUTS, True)
        setattr(self, READS_ALIGNMENT, True)  # its forward takes the ALIGNMENT_KEYS

    def forward(self, input_ids, target, chunk, student_chunk, attention_mask=None):
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        logits = call_model(self.teacher, inputs)
        return AlignedTeacher(
            logits, target, chunk, student_chunk, shared=self.shared, projection=self.projection
        )


def frozen_teacher(model: nn.Module, splits, *, taps=(), top_k: int | None = None) -> Teacher:
    """The teacher a run's distillation calls: ``Teacher(model)``, but across tokenizers (a data
    set that carries the teacher's tokenizer, ``kdistill.data.cross_tokenizer``) ``model``
    inside a ``CrossTokenizerTeacher`` with the tokens both vocabularies share, its top
    ``top_k`` kept per training window (``KeptTopKTeacher``) when given. The run keeps, saves
    and scores ``model`` itself."""
    tokenizer = getattr(splits.train, "teacher_tokenizer", None)
    if tokenizer is None or splits.task != "language_modelling":
        return Teacher(model, taps=taps)
    rows, student = splits.identity.get("teacher_vocab_size"), splits.train.codec.tokenizer
    module = CrossTokenizerTeacher(
        model,
        shared_vocabulary(tokenizer, student, rows),
        vocabulary_projection(tokenizer, student, rows),
    )
    return KeptTopKTeacher(module, top_k) if top_k else Teacher(module, taps=taps)


class KeptTopKTeacher(Teacher):
    """A ``CrossTokenizerTeacher`` run once per training window: the first batch that holds a
    window (by its ``index``) keeps the teacher's ``k`` most probable tokens per position, the
    tail mass and its own target's log-probability (the target may lie outside the top k), in
    memory; every later epoch reads them as a ``SparseTeacher`` (``teacher.cache_topk``, at
    temperature 1). What the live teacher would cost each epoch it costs once; the windows of
    a language model are fixed, so the kept values are the ones it would give again."""

    def __init__(self, module: CrossTokenizerTeacher, k: int):
        super().__init__(module)
        self.k, self.kept = k, {}

    def __call__(self, batch) -> ModelOutput:
        rows = batch["index"].tolist()
        if any(i not in self.kept for i in rows):
            aligned = super().__call__(batch).logits
            log_p = torch.log_softmax(aligned.logits.float(), -1)
            top, ids = log_p.topk(min(self.k, log_p.shape[-1]), dim=-1)
            tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), -1)
            target = log_p.gather(-1, aligned.target[..., None]).squeeze(-1)
            for row, i in enumerate(rows):
                self.kept[i] = (ids[row].cpu(), top[row].cpu(), tail[row].cpu(), target[row].cpu())
        device = batch["index"].device
        ids, top, tail, target = (torch.stack(f).to(device) for f in zip(*map(self.kept.get, rows)))
        return ModelOutput(
            AlignedTeacher(
                SparseTeacher(ids, top, tail, temperature=1.0),
                *(batch["input"][TEACHER_PREFIX + key] for key in ALIGNMENT_KEYS),
                target_log_prob=target,
                shared=self.module.shared,
                projection=self.module.projection,
            )
        )


def padded_rows(teacher_rows: int, student_rows: int, tokenizer_size: int) -> int | None:
    """The rows both logit matrices share when they differ only by padding (both at least the
    tokenizer's size), else None."""
    if teacher_rows == student_rows or min(teacher_rows, student_rows) < tokenizer_size:
        return None
    return min(teacher_rows, student_rows)


def trim_padded_vocabularies(
    teacher: nn.Module, student: nn.Module, teacher_rows: int, student_rows: int, tokenizer_size
) -> str | None:
    """Same tokenizer, logit matrices of different row counts: cut the wider model's logits to
    the shared rows (ids beyond the tokenizer's vocabulary are never data; softmax over the kept
    rows renormalises). Returns the one line that says so, or None when there is nothing to do.
    Hooks, so the models and their weights are unchanged."""
    rows = padded_rows(teacher_rows, student_rows, tokenizer_size)
    if rows is None:
        return None
    wider = teacher if teacher_rows > rows else student
    map_teacher_vocabulary(wider, torch.arange(rows))
    line = (
        f"padded vocabularies: the teacher has {teacher_rows:,} logit rows and the student "
        f"{student_rows:,} for one {tokenizer_size:,}-token vocabulary; comparing the "
        f"{rows:,} shared rows"
    )
    log.warning(line)
    return line


__all__ = [
    "ALIGNMENT_KEYS",
    "CrossTokenizerTeacher",
    "KeptTopKTeacher",
    "frozen_teacher",
    "padded_rows",
    "shared_vocabulary",
    "token_strings",
    "trim_padded_vocabularies",
    "vocabulary_projection",
]
