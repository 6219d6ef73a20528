"""Losses for sequence models: the language-modelling cross-entropy and the transformer
intermediate-layer terms of TinyBERT, MiniLM and DistilBERT.

Student first, teacher second, as everywhere in ``kdistill.losses``. Sequence tensors are
(B, L, ...); ``mask`` is (B, L), true (or non-zero) where a position counts, and every loss is
the mean over counted positions (0 when none counts). Half precision is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.logit import float32_math, upcast

__all__ = ["IGNORE_INDEX", "LM_LOSSES", "attention_kl", "hidden_cosine", "hidden_mse", "token_ce"]

IGNORE_INDEX = -100  # a target that is never a label (PyTorch's and Hugging Face's convention)


def _position_mask(mask: Tensor | None, leading: torch.Size, device) -> Tensor:
    if mask is None:
        return torch.ones(leading, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(leading):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the leading shape {tuple(leading)}"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _masked_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    # torch.where, not a product: a NaN at a padding position must not leak into the mean.
    total = torch.where(mask, per_position, 0.0).sum()
    return total / mask.sum().clamp_min(1)


def token_ce(
    s_logits: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Next-token cross-entropy with the data, mean over counted positions (nats per token).

    ``exp`` of it, over a whole split, is the perplexity. A position counts where ``mask`` is
    true and the target is not ``ignore_index``: on-policy batches mark the tokens the student
    sampled itself that way, so they are scored by the teacher but never taken as labels.

    Args:
        s_logits: student logits, (B, L, V) or (N, V).
        target: next-token ids, (B, L) or (N,), int64.
        mask: leading shape, bool or 0/1; ``None`` counts every position.
        ignore_index: target id that never counts.

    Returns:
        0-d tensor.
    """
    (s_logits,) = upcast(s_logits)
    counted = _position_mask(mask, target.shape, target.device) & (target != ignore_index)
    per_position = F.cross_entropy(
        s_logits.reshape(-1, s_logits.shape[-1]),
        torch.where(counted, target, 0).reshape(-1),
        reduction="none",
    ).reshape(target.shape)
    return _masked_mean(per_position, counted)


def _hidden_pair(name: str, s_hidden: Tensor, t_hidden: Tensor, mask: Tensor | None):
    """Upcast student and (detached) teacher hidden states, check they match, build the mask."""
    s_hidden, t_hidden = upcast(s_hidden, t_hidden.detach())
    if s_hidden.shape != t_hidden.shape:
        raise ValueError(
            f"{name}: student {tuple(s_hidden.shape)} and teacher {tuple(t_hidden.shape)} "
            "hidden states differ; add connector: auto for different widths"
        )
    return s_hidden, t_hidden, _position_mask(mask, s_hidden.shape[:-1], s_hidden.device)


@float32_math
def hidden_mse(s_hidden: Tensor, t_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Hidden-state distillation: squared error between (projected) student and teacher hidden
    states, mean over the hidden units and the counted tokens.

    Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of
    EMNLP 2020, arXiv:1909.10351 (their L_hidn and L_embd, MSE(H_S·W_h, H_T)). The projection
    W_h is the term's connector (``connector="auto"``: a linear layer when the widths differ).

    Args:
        s_hidden: student hidden states after the connector, (B, L, D).
        t_hidden: teacher hidden states, (B, L, D); detached.
        mask: (B, L), true at real tokens (padding never counts).

    Returns:
        0-d tensor.
    """
    s_hidden, t_hidden, mask = _hidden_pair("hidden_mse", s_hidden, t_hidden, mask)
    return _masked_mean((s_hidden - t_hidden).pow(2).mean(-1), mask)


@float32_math
def hidden_cosine(s_hidden: Tensor, t_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Cosine embedding loss, 1 − cos(h_S, h_T) per token, mean over counted tokens: aligns the
    directions of student and teacher hidden states.

    Sanh, Debut, Chaumond, Wolf, "DistilBERT, a distilled version of BERT: smaller, faster,
    cheaper and lighter", NeurIPS 2019 EMC² workshop, arXiv:1910.01108 (their L_cos).

    Args:
        s_hidden: student hidden states, (B, L, D) (after a connector if the widths differ).
        t_hidden: teacher hidden states, (B, L, D); detached.
        mask: (B, L), true at real tokens.
    """
    s_hidden, t_hidden, mask = _hidden_pair("hidden_cosine", s_hidden, t_hidden, mask)
    return _masked_mean(1.0 - F.cosine_similarity(s_hidden, t_hidden, dim=-1, eps=1e-8), mask)


@float32_math
def attention_kl(s_attn: Tensor, t_attn: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Self-attention distribution transfer: KL(A_T ‖ A_S) of each query's attention row,
    mean over heads and counted query positions.

    Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957 (the attention-distribution term;
    TinyBERT's L_attn compares the same maps with MSE). The maps are probabilities
    (softmax outputs), (B, H, L, L). MiniLM needs the same number of heads; when the counts
    differ, both sides are averaged over their heads first (the mean of distributions is a
    distribution), which keeps the term usable for a narrow student.

    Args:
        s_attn: student attention probabilities, (B, H_S, L, L).
        t_attn: teacher attention probabilities, (B, H_T, L, L); detached.
        mask: (B, L), true at real tokens: padded query rows never count (padded keys carry
            no probability in either model).

    Returns:
        0-d tensor (nats).
    """
    s_attn, t_attn = upcast(s_attn, t_attn.detach())
    if s_attn.dim() != 4 or t_attn.dim() != 4 or s_attn.shape[-2:] != t_attn.shape[-2:]:
        raise ValueError(
            f"attention_kl: expects (B, H, L, L) maps of the same length, got student "
            f"{tuple(s_attn.shape)} and teacher {tuple(t_attn.shape)}"
        )
    if s_attn.shape[1] != t_attn.shape[1]:
        s_attn, t_attn = s_attn.mean(1, keepdim=True), t_attn.mean(1, keepdim=True)
    tiny = torch.finfo(s_attn.dtype).tiny
    # 0·log 0 = 0: teacher zeros (masked keys) contribute nothing; the student floor keeps a
    # row the student zeroes out finite instead of inf.
    per_row = torch.xlogy(t_attn, t_attn) - t_attn * s_attn.clamp_min(tiny).log()
    per_query = per_row.sum(-1).mean(1)  # (B, L): sum over keys, mean over heads
    mask = _position_mask(mask, per_query.shape, per_query.device)
    return _masked_mean(per_query, mask)


LM_LOSSES = {
    "token_ce": token_ce,
    "hidden_mse": hidden_mse,
    "hidden_cosine": hidden_cosine,
    "attention_kl": attention_kl,
}
