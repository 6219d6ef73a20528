"""Teacher and student vocabularies: logit terms compare the two distributions token by token,
so both must score the same tokens in the same order.

``check_vocabularies`` turns a mismatch into one line naming both sizes; ``map_teacher_vocabulary``
is the supported mapping: a student whose vocabulary is a subset of the teacher's (a pruned
tokenizer) gets the teacher's logits at those ids, in the student's order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kdistill.errors import UserError


class VocabularyMismatchError(UserError):
    """Teacher and student logits cover different vocabularies."""


def check_vocabularies(
    student_logits: Tensor, teacher_logits: Tensor, terms: Sequence = ()
) -> None:
    """Raise ``VocabularyMismatchError`` when a term compares logits of different widths."""
    from kdistill.methods import LOGITS

    comparing = [
        t.name
        for t in terms
        if getattr(t, "takes_teacher", False) and t.student == LOGITS and t.teacher == LOGITS
    ]
    if not comparing:
        return
    s_size, t_size = student_logits.shape[-1], teacher_logits.shape[-1]
    if s_size != t_size:
        kind = (
            "vocabulary"
            if student_logits.dim() == 3 or teacher_logits.dim() == 3
            else "number of classes"
        )
        raise VocabularyMismatchError(
            f"the teacher's {kind} has {t_size} entries but the student's has {s_size}: the "
            f"logit term(s) {', '.join(comparing)} compare them entry by entry; give the student "
            f"the teacher's tokenizer (vocab_size={t_size}) or configure a mapping "
            "(distill.params.vocab_map: the teacher id of each student id)"
        )


def map_teacher_vocabulary(teacher: nn.Module, teacher_ids: Sequence[int] | Tensor):
    """Make ``teacher`` return its logits at ``teacher_ids`` only (student id i ↔ teacher id
    ``teacher_ids[i]``), through a forward hook: the model and its tap names are unchanged.
    Softmax over the kept logits renormalises the teacher on the student's tokens.

    Returns the hook handle (``.remove()`` undoes it).
    """
    index = torch.as_tensor(teacher_ids, dtype=torch.int64)
    if index.dim() != 1 or len(index) == 0:
        raise UserError(
            "distill.params.vocab_map: a non-empty list of teacher token ids, one per student id"
        )

    def restrict(module: nn.Module, inputs, output):
        logits = (
            output
            if isinstance(output, Tensor)
            else output["logits"]
            if isinstance(output, Mapping)
            else output.logits
        )
        if int(index.max()) >= logits.shape[-1]:
            raise VocabularyMismatchError(
                f"distill.params.vocab_map names teacher id {int(index.max())} but the teacher's "
                f"vocabulary has {logits.shape[-1]} entries"
            )
        mapped = logits.index_select(-1, index.to(logits.device))
        if isinstance(output, Tensor):
            return mapped
        output["logits"] = mapped
        return output

    return teacher.register_forward_hook(restrict)


__all__ = ["VocabularyMismatchError", "check_vocabularies", "map_teacher_vocabulary"]
