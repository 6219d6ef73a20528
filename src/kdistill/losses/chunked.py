"""Token losses computed a chunk of positions at a time from the final hidden states, so that a
language model's (B, L, V) logits never exist: over a 49k vocabulary they, and the several
(B, L, V) intermediates of a softmax-based loss and its backward, are most of a step's memory.

The design is Liger-Kernel's fused linear losses (Hsu et al., "Liger Kernel: Efficient Triton
Kernels for LLM Training", arXiv:2410.10989), in plain PyTorch: for each chunk of positions the
forward pass computes the chunk's logits ``hidden @ W.T + b``, the loss, and right away the
loss's gradient with respect to the chunk's hidden states and to ``W`` (and ``b``); then the
chunk's logits are freed. The backward pass only scales the stored gradients by the incoming
one. Peak memory is a few (chunk, V) tensors plus the gradients of ``hidden`` and ``W`` that any
backward allocates; the compute is the unchunked one (one product forward, two backward),
unlike a checkpointed chunk, which recomputes its logits. torchtune's
``ForwardKLWithChunkedOutputLoss`` splits logits the model has already made, which bounds the
loss's intermediates but not the logits themselves.

Every term of a step that reads the student's logits is computed in the same pass over the
chunks (``chunked_token_losses``), so the cross-entropy and the divergence share one product.
Values and gradients equal those of the unchunked losses of ``kdistill.losses.token`` and
``token_ce`` (tests/test_chunked_loss.py, float64): each term is a sum over positions, divided
by its number of counted positions, which is known before the first chunk.

A chunk holds about ten (chunk, V) float32 tensors (logits, log-probabilities of both models,
their products, the gradient), so the chunk should be well below B·L: 128–256 positions for a
49k vocabulary (bench/results/chunked_loss.md: at B = 4, L = 256, 256 positions take 0.36× the
whole loss's peak memory for forward KL, 64 positions 0.21×).

The teacher side is whatever the unchunked losses take, read chunk by chunk: dense logits, a
top-k ``SparseTeacher`` or a ``SampledTeacher`` (their temperature checked as in
``kdistill.losses.token``), or the live
teacher's ``LazyLogits``, whose chunk of logits is computed without autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.closed_form import closed_form
from kdistill.losses.lm import IGNORE_INDEX, token_ce
from kdistill.losses.sparse import SPARSE_TEACHERS, SparseTeacher
from kdistill.losses.token import TOKEN_LOSSES
from kdistill.modeling import LazyLogits

__all__ = ["CHUNKED_LOSSES", "ChunkedTerm", "chunked_token_loss", "chunked_token_losses"]

# Losses with a chunked form, and what they compare the student with: the data's next token
# ("target") or the teacher's distribution ("teacher").
CHUNKED_LOSSES: dict[Callable, str] = {
    token_ce: "target",
    **{loss: "teacher" for loss in TOKEN_LOSSES.values()},
}


@dataclass(frozen=True)
class ChunkedTerm:
    """One loss of a chunked pass: ``weight`` times its mean over its counted positions."""

    loss: Callable
    weight: float | Tensor = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.loss not in CHUNKED_LOSSES:
            name = getattr(self.loss, "__name__", type(self.loss).__name__)
            raise ValueError(
                f"{name} has no chunked form; chunked losses: "
                f"{', '.join(f.__name__ for f in CHUNKED_LOSSES)}"
            )

    @property
    def reads_target(self) -> bool:
        return CHUNKED_LOSSES[self.loss] == "target"


class _Rows:
    """The teacher's values at a set of flat positions, whatever form the teacher has."""

    def __init__(self, teacher, positions: int, dtype: torch.dtype):
        self.teacher, self.dtype = teacher, dtype
        if isinstance(teacher, LazyLogits):
            self.hidden = teacher.hidden.detach().reshape(positions, -1)
            self.product = _product_dtype(self.hidden, dtype, teacher.product)
            self.weight = teacher.weight.detach().to(self.product)
            self.bias = None if teacher.bias is None else teacher.bias.detach().to(self.product)
        elif isinstance(teacher, SPARSE_TEACHERS):  # (…, k) and (…,) fields, as flat rows
            leading = teacher.indices.dim() - 1
            self.sparse = teacher.map(lambda f: f.reshape(positions, *f.shape[leading:]))
        elif teacher is not None:
            self.logits = teacher.detach().reshape(positions, teacher.shape[-1])

    def __call__(self, rows: Tensor):
        teacher = self.teacher
        if isinstance(teacher, LazyLogits):
            with torch.no_grad():
                return F.linear(self.hidden[rows].to(self.product), self.weight, self.bias).to(
                    self.dtype
                )
        if isinstance(teacher, SPARSE_TEACHERS):
            return self.sparse.map(lambda f: f[rows])
        return None if teacher is None else self.logits[rows]


def _chunk_sum(
    term: ChunkedTerm, logits: Tensor, teacher_rows, target_rows: Tensor | None
) -> Tensor:
    """The term summed over a chunk of counted positions."""
    if term.reads_target:
        ignore_index = term.params.get("ignore_index", IGNORE_INDEX)
        counted = target_rows != ignore_index
        per_position = F.cross_entropy(
            logits, torch.where(counted, target_rows, 0), reduction="none"
        )
        return torch.where(counted, per_position, 0.0).sum()
    return term.loss(logits, teacher_rows, reduction="sum", **term.params)


def _counts(terms: Sequence[ChunkedTerm], target: Tensor | None, counted: Tensor) -> list[Tensor]:
    """Each term's number of counted positions (at least 1: a batch of padding is 0, not 0/0)."""
    result = []
    for term in terms:
        positions = counted
        if term.reads_target:
            positions = counted & (target != term.params.get("ignore_index", IGNORE_INDEX))
        result.append(positions.sum().clamp_min(1))
    return result


class _ChunkedLosses(torch.autograd.Function):
    """Forward: the weighted sum of the terms and, when asked, its gradients; backward: those
    gradients times the incoming one."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, spec):
        total, values, grads = _run(hidden, weight, bias, spec, with_grad=True)
        ctx.save_for_backward(*grads)
        ctx.has_bias, ctx.used = bias is not None, False
        ctx.mark_non_differentiable(values)
        return total, values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_values):
        grads = list(ctx.saved_tensors)
        # Scaled in place: a second (V, H) buffer the size of the head would double what the
        # chunking saves on a small batch. A second backward through the same pass is refused.
        if ctx.used:
            raise RuntimeError(
                "a chunked loss's gradients are computed once: call backward once per forward"
            )
        ctx.used = True
        for grad in grads:
            grad.mul_(grad_total.to(grad.dtype))
        if not ctx.has_bias:
            grads.append(None)
        return *grads, None


def _chunk_pass(terms, coefficients, logits, teacher_rows, target_rows, with_grad: bool):
    """Each term's sum over a chunk and, with ``with_grad``, the gradient of Σ coefficient·sum
    with respect to the chunk's logits: in closed form where the term has one, through autograd
    for the others (and for the cases a closed form hands back)."""
    sums, grad, generic = [None] * len(terms), None, []
    for i, term in enumerate(terms):
        solved = (
            closed_form(term.loss, logits, teacher_rows, target_rows, term.params)
            if with_grad
            else None
        )
        if solved is None:
            generic.append(i)
            continue
        sums[i], term_grad = solved
        term_grad.mul_(coefficients[i])
        grad = term_grad if grad is None else grad.add_(term_grad)
    if generic:
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(with_grad)
            values = [_chunk_sum(terms[i], leaf, teacher_rows, target_rows) for i in generic]
            if with_grad:
                weighted = sum(value * coefficients[i] for i, value in zip(generic, values))
                (term_grad,) = torch.autograd.grad(weighted, leaf)
                grad = term_grad if grad is None else grad.add_(term_grad)
        for i, value in zip(generic, values):
            sums[i] = value.detach()
    return torch.stack(sums), grad


def _product_dtype(
    hidden: Tensor, loss_dtype: torch.dtype, autocast: torch.dtype | None = None
) -> torch.dtype:
    """The head's product runs in the precision the unchunked head would have: autocast's where
    the hidden states were made (``LazyLogits.product``), else half when a half-precision model
    made them. It is the fast path on a GPU and on CPUs with bf16 units (AMX: ~6x float32's
    matrix products); the loss math itself is float32 at least, as everywhere in
    kdistill.losses."""
    if autocast is not None:
        return autocast
    return hidden.dtype if hidden.dtype in (torch.float16, torch.bfloat16) else loss_dtype


def _run(hidden: Tensor, weight: Tensor, bias: Tensor | None, spec: dict, *, with_grad: bool):
    terms, chunk_size, rows = spec["terms"], spec["chunk_size"], spec["rows"]
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    product = _product_dtype(hidden, dtype, spec["product"])
    flat = hidden.detach().reshape(-1, hidden.shape[-1])
    w = weight.detach().to(product)
    b = None if bias is None else bias.detach().to(product)
    teacher, target = spec["teacher"], spec["target"]
    sums = torch.zeros(len(terms), dtype=dtype, device=hidden.device)
    # A weight may be a 0-d tensor (a warm-up term's weight at the Distiller's epoch tensor).
    weights = torch.stack(
        [torch.as_tensor(term.weight, dtype=dtype, device=hidden.device) for term in terms]
    )
    coefficients = weights / torch.stack(spec["counts"]).to(dtype)
    # The head's gradient is summed over the chunks in float32 at least.
    grad_hidden = torch.zeros_like(flat, dtype=product) if with_grad else None
    grad_weight = torch.zeros_like(w, dtype=dtype) if with_grad else None
    grad_bias = None if b is None or not with_grad else torch.zeros_like(b, dtype=dtype)
    for start in range(0, len(rows), chunk_size):
        chunk_rows = rows[start : start + chunk_size]
        chunk_hidden = flat[chunk_rows]
        logits = F.linear(chunk_hidden.to(product), w, b).to(dtype)
        teacher_rows = teacher(chunk_rows)
        target_rows = None if target is None else target[chunk_rows]
        chunk, grad_logits = _chunk_pass(
            terms, coefficients, logits, teacher_rows, target_rows, with_grad
        )
        sums += chunk
        if with_grad:
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_hidden[chunk_rows] = grad_logits.to(product) @ w
            if chunk_hidden.dtype == dtype:
                # float32 hidden states (HF's, even under bf16 autocast): the head's gradient
                # summed in place in float32. A bf16 product here would need a cast and an add
                # of a (V, H) matrix per chunk: slower on a CPU than this, and less exact.
                grad_weight.addmm_(grad_logits.T, chunk_hidden)
            else:
                grad_weight += (grad_logits.to(product).T @ chunk_hidden).to(dtype)
        del logits, chunk  # the chunk's (chunk, V) tensors go before the next chunk's come
    values = sums / torch.stack(spec["counts"]).to(dtype)
    total = (values * weights).sum()
    if not with_grad:
        return total, values, ()
    grads = [grad_hidden.reshape(hidden.shape).to(hidden.dtype), grad_weight.to(weight.dtype)]
    if grad_bias is not None:
        grads.append(grad_bias.to(bias.dtype))
    return total, values, grads


def chunked_token_losses(
    student: LazyLogits,
    teacher: Tensor | SparseTeacher | LazyLogits | None,
    target: Tensor | None,
    terms: Sequence[ChunkedTerm],
    *,
    mask: Tensor | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Several token losses of one student in one pass over chunks of positions.

    Args:
        student: ``LazyLogits``: (B, L, H) hidden states and the (V, H) head (differentiable).
        teacher: (B, L, V) logits, a ``SparseTeacher`` with (B, L, k) fields, the teacher's
            ``LazyLogits`` (never differentiated), or ``None`` when no term reads it.
        target: (B, L) next-token ids, for ``token_ce`` (``IGNORE_INDEX`` never counts).
        terms: the losses, their weights and keyword parameters (``temperature``, ``beta``...).
        mask: (B, L), true (or non-zero) where a position counts; ``None`` counts all.
        chunk_size: positions per chunk, ≥ 1; only counted positions are computed.

    Returns:
        ``(total, values)``: Σ weight·value, differentiable with respect to the hidden states,
        the head's weight and bias; and each term's value (the mean over its counted
        positions, exactly what the unchunked loss returns), detached, in ``terms`` order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    terms = list(terms)
    if not terms:
        raise ValueError("chunked_token_losses: give at least one term")
    leading = tuple(student.hidden.shape[:-1])
    if mask is not None and tuple(mask.shape) != leading:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the hidden states' leading shape {leading}"
        )
    if target is None and any(term.reads_target for term in terms):
        raise ValueError("token_ce compares with the data: pass target")
    if target is not None and tuple(target.shape) != leading:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal "
            f"the hidden states' leading shape {leading}"
        )
    needs_teacher = any(not term.reads_target for term in terms)
    if needs_teacher and teacher is None:
        raise ValueError("these token losses compare with a teacher: pass its logits")
    if needs_teacher and tuple(teacher.shape[:-1]) != leading:
        raise ValueError(
            f"teacher positions {tuple(teacher.shape[:-1])} differ from the student's {leading}"
        )
    positions = student.hidden[..., 0].numel()
    counted = (
        torch.ones(leading, dtype=torch.bool, device=student.device)
        if mask is None
        else mask.bool()
    )
    dtype = torch.promote_types(student.hidden.dtype, torch.float32)
    spec = {
        "terms": terms,
        "chunk_size": chunk_size,
        # Positions no term counts (padding, an on-policy prompt) are skipped, not computed.
        "rows": counted.reshape(-1).nonzero().squeeze(1),
        "counts": _counts(terms, target, counted),
        "teacher": _Rows(teacher if needs_teacher else None, positions, dtype),
        "target": None if target is None else target.reshape(-1),
        "product": student.product,
    }
    inputs = (student.hidden, student.weight, student.bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        return _ChunkedLosses.apply(*inputs, spec)
    total, values, _ = _run(*inputs, spec, with_grad=False)
    return total, values


def chunked_token_loss(
    loss: Callable,
    s_hidden: Tensor,
    lm_head_weight: Tensor,
    teacher: Tensor | SparseTeacher | LazyLogits | None = None,
    *,
    lm_head_bias: Tensor | None = None,
    target: Tensor | None = None,
    mask: Tensor | None = None,
    chunk_size: int = 256,
    **params,
) -> Tensor:
    """One token loss (``token_ce`` or a loss of ``kdistill.losses.token``) of the logits
    ``s_hidden @ lm_head_weight.T + lm_head_bias``, computed ``chunk_size`` positions at a
    time: the value and gradients of ``loss(logits, teacher, mask=mask, **params)`` (or
    ``token_ce(logits, target, mask=mask)``), reduction ``"mean"``.

    Args:
        loss: the function, e.g. ``forward_kl``, ``jsd``, ``token_ce``.
        s_hidden: (B, L, H) or (N, H) final hidden states of the student.
        lm_head_weight: (V, H) output projection.
        teacher, target, mask, chunk_size: as ``chunked_token_losses``.
        **params: the loss's keyword parameters (``temperature``, ``beta``, ``alpha``).
    """
    student = LazyLogits(s_hidden, lm_head_weight, lm_head_bias)
    term = ChunkedTerm(loss, 1.0, params)
    total, _ = chunked_token_losses(
        student, teacher, target, [term], mask=mask, chunk_size=chunk_size
    )
    return total
