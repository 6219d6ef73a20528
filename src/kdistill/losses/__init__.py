"""Distillation losses: plain functions of tensors, student first, teacher second.

``LOSSES`` is the one place a loss is looked up by name (recipes, ``Term``, ``kdistill list``).
Each family module keeps an explicit dict of its losses; nothing registers itself on import.
"""

from __future__ import annotations

from typing import Callable

from kdistill.losses.feature import FEATURE_LOSSES
from kdistill.losses.logit import LOGIT_LOSSES, cross_entropy, kd, kl_batchmean
from kdistill.losses.relation import RELATION_LOSSES
from kdistill.losses.token import (
    TOKEN_LOSSES,
    SparseTeacher,
    forward_kl,
    forward_kl_topk,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    topk_teacher,
    tvd,
)

LOSSES: dict[str, Callable] = {
    **LOGIT_LOSSES,
    **FEATURE_LOSSES,
    **RELATION_LOSSES,
    **TOKEN_LOSSES,
}

__all__ = [
    "LOSSES", "cross_entropy", "kd", "kl_batchmean",
    "SparseTeacher", "forward_kl", "forward_kl_topk", "jsd", "reverse_kl", "skew_kl",
    "skew_reverse_kl", "topk_teacher", "tvd",
]
