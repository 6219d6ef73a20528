"""How the weights move: the optimiser (with its parameter groups), the learning-rate schedule
with its warm-up, gradient accumulation and clipping, gathered in one ``Optimization`` that
``train_loop`` takes as a single argument."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class Optimization:
    """Everything about the update except the learning rate and the epochs (``train_loop``'s own).

    ``grad_accum`` sums the gradients of that many batches before each update, each batch
    weighed by its share of the window (``accumulation_windows``): the same update as one batch
    that many times larger, the epoch's last, shorter window included.
    ``clip_grad_norm`` rescales the gradient to at most that global L2 norm before each update.
    ``warmup_steps`` (or ``warmup_ratio`` of all updates) raise the rate linearly from 0 before
    the schedule starts (Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677).
    """

    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @classmethod
    def from_settings(cls, train, optimizer: str | None = None) -> Optimization:
        """From a ``TrainConfig`` (a recipe's ``train:``, ``distill(train=...)``); ``optimizer``:
        another than ``train.optimizer`` (a teacher's own)."""
        return cls(
            optimizer or train.optimizer,
            weight_decay=train.weight_decay,
            momentum=train.momentum,
            schedule=train.schedule,
            warmup_steps=train.warmup_steps,
            warmup_ratio=train.warmup_ratio,
            grad_accum=train.grad_accum,
            clip_grad_norm=train.clip_grad_norm,
        )

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps or int(self.warmup_ratio * total_steps)


def accumulation_windows(
    batches: Iterable,
    size: int,
    prepare: Callable,
    counts: Callable[..., Tensor],
) -> Iterator[tuple[dict, Tensor | None, bool]]:
    """An epoch's batches in windows of ``size`` (the last may hold fewer), as ``(batch,
    shares, update)``: the batch as ``prepare`` makes it (the batch transform), its share of
    each term's count over its window (``counts``: ``Distiller.counts``), and whether the
    update follows it. ``size`` 1 yields every batch with ``shares`` None and ``update`` True.

    Each term is a mean over its own batch: over its samples (a classification loss), or its
    counted tokens (a token loss). Dividing every batch by ``size`` would give the epoch's
    short last window too small a step, and a batch of 9 counted tokens the weight of one of
    16; weighing each by its share of the window's count is the mean over the whole window,
    one batch that large exactly (what TRL and transformers do with ``num_items_in_batch``).
    The window is read ahead, transformed, before its first step: its counts are known then.
    With several processes, each weighs its own window and DDP averages the processes, as
    it does without accumulation.
    """
    if size == 1:
        for batch in batches:
            yield prepare(batch), None, True
        return
    window: list[dict] = []
    for batch in batches:
        window.append(prepare(batch))
        if len(window) == size:
            yield from _weighed(window, counts)
            window = []
    if window:
        yield from _weighed(window, counts)


def _weighed(window: list[dict], counts: Callable[..., Tensor]):
    per_batch = [counts(batch) for batch in window]
    # A term no batch of the window counts (all padding) is 0 in each: 0 / 1, not 0 / 0.
    total = torch.stack(per_batch).sum(0).clamp_min(1)
    for position, (batch, count) in enumerate(zip(window, per_batch)):
        yield batch, count / total, position == len(window) - 1


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only: biases and the scales and shifts of
    normalisation layers (every parameter of one dimension) are not decayed, as in the BERT and
    timm reference recipes; decaying a norm's scale towards 0 fights the normalisation."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(
    parameters,
    name: str = "adam",
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``parameters``: tensors or parameter groups (``parameter_groups``); a group's own
    ``weight_decay`` wins over the argument. Adam and AdamW use PyTorch's fused kernel where the
    parameters' device has one (CPU and CUDA do)."""
    if name in ("adam", "adamw"):
        return _fused_if_supported(
            torch.optim.Adam if name == "adam" else torch.optim.AdamW,
            list(parameters),
            lr=lr,
            weight_decay=weight_decay,
        )
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
        )
    raise ValueError(f"optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def _fused_if_supported(optimizer: type[torch.optim.Optimizer], parameters: list, **settings):
    # The fused kernel updates each tensor in one pass; the default (foreach) chain makes
    # temporaries the size of all the parameters. For a 68M-parameter model on one CPU thread:
    # a step in 97 ms instead of 421 ms, and 260 MB less peak memory (the same update up to
    # rounding). A device without the kernel (an XLA one, say) refuses it at construction.
    try:
        return optimizer(parameters, fused=True, **settings)
    except RuntimeError:
        return optimizer(parameters, **settings)


def make_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    *,
    step_every: int = 0,
    gamma: float = 0.1,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-update schedule. The first ``warmup_steps`` updates rise linearly from 0 (update
    0 at rate 0, as in the Hugging Face schedules); the schedule then runs over the remaining
    updates. ``step`` multiplies the rate by ``gamma`` every ``step_every`` updates (default: at
    1/2 and 3/4 of training, as in the CIFAR recipes).

    Every schedule is a ``LambdaLR`` (an absolute factor per update) rather than MultiStepLR
    and friends: its state is plain numbers, so checkpoints stay JSON + tensors.
    """
    warmup = min(warmup_steps, total_steps)
    after = max(total_steps - warmup, 1)
    if name == "cosine":

        def shape(step):
            return 0.5 * (1 + math.cos(math.pi * min(step / after, 1.0)))
    elif name == "step":
        milestones = (
            list(range(step_every, after, step_every))
            if step_every
            else [after // 2, after * 3 // 4]
        )

        def shape(step):
            return gamma ** sum(step >= m for m in milestones)
    elif name == "constant":

        def shape(step):
            return 1.0
    else:
        raise ValueError(f"schedule {name!r}: choose from {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        return step / warmup if step < warmup else shape(step - warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
