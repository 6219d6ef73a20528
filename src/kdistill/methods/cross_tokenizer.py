"""The cross-tokenizer preset: token cross-entropy on the student's own tokens plus a loss over
the byte-aligned chunks of teacher and student (``kdistill.losses.cross_tokenizer``)."""

from __future__ import annotations

from typing import Any

from kdistill.losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdistill.methods.terms import Term, mixed_ce_weight


def cross_tokenizer(
    *,
    loss: str = "projected",
    temperature: float = 1.0,
    alpha: float = 0.5,
    ce_weight: float | None = None,
    top_k: int | None = None,
):
    """Cross-tokenizer LM distillation: (1−α)·token CE + α·(uld | hybrid | projected | alm) per
    aligned chunk.

    For a student whose tokenizer is not the teacher's (``data.options.student_tokenizer``).
    ``loss``: ``uld`` (sorted probabilities, Boizard et al. 2024, arXiv:2402.12030), ``hybrid``
    (exact-match KL over the shared tokens plus ULD over the rest, as GOLD), ``projected`` (every
    teacher token onto the student token its string starts with, then a KL; after X-Token,
    arXiv:2605.21699), or ``alm`` (chunk likelihoods, after Minixhofer et al. 2025,
    arXiv:2503.20083). ``projected`` is the default: the best of the four over 3 seeds on the
    SmolLM2 → BPE-GPT race (bench/results/cross_tokenizer.md: 21.2 % of the teacher–scratch gap
    in bits per byte, hybrid 19.8 %, ULD and ALM behind scratch). ``top_k`` pairs only the k
    largest sorted probabilities in ULD (cheaper, an upper bound); ``None``: all. The chunk term
    is a mean over aligned chunks; gradient accumulation weighs a batch by its counted
    positions, which is the same up to the chunks-per-token ratio (about 1 on Shakespeare).
    """
    if loss not in CROSS_TOKENIZER_LOSSES:
        raise ValueError(
            f"cross_tokenizer: loss {loss!r}; choose {', '.join(CROSS_TOKENIZER_LOSSES)}"
        )
    params: dict[str, Any] = {"temperature": temperature}
    if top_k is not None and loss in ("uld", "hybrid"):
        params["top_k"] = top_k
    terms = [
        Term("ce", "token_ce", weight=mixed_ce_weight(alpha, ce_weight), teacher=None),
        Term("xtok", CROSS_TOKENIZER_LOSSES[loss], weight=alpha, params=params),
    ]
    return [t for t in terms if t.weight]


def check_across_tokenizers(terms, field: str) -> None:
    """Refuse a term that compares teacher and student logits entry by entry (``token_kd``'s
    ``forward_kl``, ``kd``, ...) when the student has a vocabulary of its own: entry i is not
    the same token on both sides."""
    from kdistill.errors import ConfigError
    from kdistill.modeling import LOGITS

    aligned = set(CROSS_TOKENIZER_LOSSES.values())
    wrong = [
        t.name
        for t in terms
        if t.takes_teacher and LOGITS == t.student == t.teacher and t.loss not in aligned
    ]
    if wrong:
        raise ConfigError(
            f"{field}: the term(s) {', '.join(wrong)} compare teacher and student token by token, "
            "but data.options.student_tokenizer gives the student a vocabulary of its own: use "
            "method=cross_tokenizer (distill.params.loss: uld, hybrid, projected or alm)"
        )


def check_cross_tokenizer_recipe(recipe) -> None:
    """What a run across tokenizers does not take (each a one-line ``ConfigError``): the
    teacher reads its own tokens of each window and the losses its live logits with the
    alignment, so it is one frozen model, loaded (pretrained, or a checkpoint), never trained
    here on the student's targets. ``teacher.cache_topk`` alone keeps its top k per training
    window in memory (``kdistill.teachers.cross_tokenizer.KeptTopKTeacher``); with
    ``teacher.cache`` the top k of the teacher's tokens of the whole text go to disk, one cache
    for any student tokenizer (``kdistill.teachers.text_cache``); sampled tokens are not
    taken (the chunk losses read a top k)."""
    from kdistill.errors import ConfigError

    teacher, reason = recipe.teacher, None
    if recipe.distill.mode != "teacher" or recipe.teachers is not None or recipe.assistant:
        reason = "distill.mode=teacher with one teacher (no teachers list, no assistant)"
    elif teacher.onnx:
        reason = "a teacher built from the zoo or a checkpoint, not teacher.onnx"
    elif teacher.trained_here:
        reason = "teacher.epochs=0 (a pretrained teacher) or a teacher.checkpoint"
    elif teacher.cache_samples:
        reason = "teacher.cache_topk, not teacher.cache_samples (the chunk losses read a top k)"
    elif teacher.cache and not teacher.cache_topk:
        reason = (
            "teacher.cache_topk with teacher.cache (its k most probable tokens per position of "
            "the text, not every logit)"
        )
    if reason:
        raise ConfigError(
            f"data.options.student_tokenizer: a teacher with a tokenizer of its own needs {reason}"
        )


__all__ = ["check_across_tokenizers", "check_cross_tokenizer_recipe", "cross_tokenizer"]
