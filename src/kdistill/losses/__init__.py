"""Distillation losses: plain functions of tensors, student first, teacher second.

``LOSSES`` is the one place a loss is looked up by name (recipes, ``Term``, ``kdistill list``).
Each family module keeps an explicit dict of its losses; nothing registers itself on import.
Stateful losses (VID, CRD) are ``nn.Module`` classes: ``Distiller.build`` sizes them from the
probed feature shapes (``from_shapes``).
"""

from __future__ import annotations

from collections.abc import Callable

from kdistill.losses.chunked import ChunkedTerm, chunked_token_loss, chunked_token_losses
from kdistill.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdistill.losses.feature import FEATURE_LOSSES, at, hint, nst
from kdistill.losses.lm import LM_LOSSES, attention_kl, hidden_cosine, hidden_mse, token_ce
from kdistill.losses.logit import (
    LOGIT_LOSSES,
    cross_entropy,
    dist,
    dkd,
    kd,
    kl_batchmean,
    nkd,
    standardize_logits,
)
from kdistill.losses.ranking import RANKING_LOSSES
from kdistill.losses.relation import RELATION_LOSSES, cc, pkt, rkd, sp
from kdistill.losses.stateful import STATEFUL_LOSSES, CRDLoss, VIDLoss
from kdistill.losses.token import (
    TOKEN_LOSSES,
    SampledTeacher,
    SparseTeacher,
    forward_kl,
    forward_kl_topk,
    jsd,
    reverse_kl,
    sampled_teacher,
    skew_kl,
    skew_reverse_kl,
    topk_teacher,
    tvd,
)

LOSSES: dict[str, Callable] = {
    **LOGIT_LOSSES,
    **FEATURE_LOSSES,
    **RELATION_LOSSES,
    **STATEFUL_LOSSES,
    **TOKEN_LOSSES,
    **LM_LOSSES,
    **RANKING_LOSSES,
    **CROSS_TOKENIZER_LOSSES,
}

__all__ = [
    "LOSSES",
    "STATEFUL_LOSSES",
    "CRDLoss",
    "ChunkedTerm",
    "SampledTeacher",
    "SparseTeacher",
    "VIDLoss",
    "at",
    "attention_kl",
    "cc",
    "chunked_token_loss",
    "chunked_token_losses",
    "cross_entropy",
    "dist",
    "dkd",
    "forward_kl",
    "forward_kl_topk",
    "hidden_cosine",
    "hidden_mse",
    "hint",
    "jsd",
    "kd",
    "kl_batchmean",
    "nkd",
    "nst",
    "pkt",
    "reverse_kl",
    "rkd",
    "sampled_teacher",
    "skew_kl",
    "skew_reverse_kl",
    "sp",
    "standardize_logits",
    "token_ce",
    "topk_teacher",
    "tvd",
]
