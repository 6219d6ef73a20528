"""A ``Term``: which student output is compared with which teacher output (``"logits"`` or a
module name read through a ``FeatureTap``), with which loss, at what weight, optionally through
a trainable connector and with a warm-up of its weight.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.losses import LOSSES
from kdistill.modeling import LOGITS

PENULTIMATE = "head:input"  # the pooled vector in front of the classifier of every zoo model
MAX_WARMUP_EPOCHS = 10**6


@dataclass
class Term:
    """One weighted loss of the distillation objective.

    Args:
        name: key of this term in the loss dict (``"loss/<name>"``); unique per distiller, and
            without dots when the term has a connector or a stateful loss (a module key).
        loss: a name in ``kdistill.losses.LOSSES``, a function ``(student, teacher, [target],
            **params)``, or an ``nn.Module`` for losses with learned state. A stateful loss
            given by name (``"vid"``, ``"crd"``) or as its class is built by ``Distiller.build``
            from the probed feature shapes, with ``params`` as its constructor arguments.
        weight: multiplier in the total loss.
        student: ``"logits"`` or the module name of the student feature to compare.
        teacher: ``"logits"``, a module name of the teacher, or ``None`` for losses against the
            labels only (cross-entropy).
        connector: ``None``, or a connector kind (``"auto"``, ``"linear"``, ``"conv"``) that maps
            the student feature to the teacher feature's shape, sized by probing.
        params: keyword hyper-parameters passed to the loss (``temperature=4.0``, ...).
        warmup_epochs: the weight ramps as ``min(epoch / warmup_epochs, 1)`` with 1-based epochs
            (DKD's warm-up, Zhao et al. 2022); 0 means full weight from the start.
        chunk_size: for a language model's token losses: positions per chunk when the logits
            are computed and scored a chunk at a time from the final hidden states
            (``kdistill.losses.chunked``), so the (B, L, V) logits never exist; 0 = whole.
    """

    name: str
    loss: str | Callable | nn.Module | type[nn.Module]
    weight: float = 1.0
    student: str = LOGITS
    teacher: str | None = LOGITS
    connector: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0
    chunk_size: int = 0

    def __post_init__(self):
        if self.chunk_size < 0:
            raise ValueError(
                f"term {self.name!r}: chunk_size must be ≥ 0 (0 = off), got {self.chunk_size}"
            )
        # Beyond any run's length, and an int a float (the ramp's epoch / warmup_epochs) can hold.
        if type(self.warmup_epochs) is not int or not 0 <= self.warmup_epochs <= MAX_WARMUP_EPOCHS:
            raise ValueError(
                f"term {self.name!r}: warmup_epochs must be a whole number of epochs "
                f"from 0 to {MAX_WARMUP_EPOCHS:,}, got {self.warmup_epochs!r}"
            )
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                import difflib

                close = difflib.get_close_matches(self.loss, LOSSES, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"term {self.name!r}: unknown loss {self.loss!r}{hint}")
            self.loss = LOSSES[self.loss]
        if self.needs_build and not hasattr(self.loss, "from_shapes"):
            raise ValueError(
                f"term {self.name!r}: loss class {self.loss.__name__} needs a classmethod "
                "from_shapes(student_shape, teacher_shape, *, num_samples=None, **params)"
            )
        is_module = isinstance(self.loss, nn.Module) or self.needs_build
        function = self.loss.forward if is_module else self.loss
        parameters = list(inspect.signature(function).parameters.values())
        if self.needs_build:
            parameters = parameters[1:]  # the unbound forward's `self`
        positional = [
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        # Argument order is student, teacher, target (DESIGN.md); a loss whose second
        # positional argument is `target` compares with the labels only.
        self.takes_target = "target" in positional
        self.takes_teacher = len(positional) >= 2 and positional[1] != "target"
        names = {p.name for p in parameters}
        self.takes_index = "index" in names  # memory-bank methods (CRD) find samples by it
        self.takes_mask = "mask" in names  # token losses skip padding positions
        # token_ce also skips the positions whose target is its ignore_index (see count)
        default = next((p.default for p in parameters if p.name == "ignore_index"), None)
        self.ignore_index = None if default is None else self.params.get("ignore_index", default)
        if not self.takes_teacher:
            self.teacher = None
        elif self.teacher is None:
            raise ValueError(f"term {self.name!r}: loss needs a teacher output; set teacher=")

    @property
    def needs_build(self) -> bool:
        """A stateful loss not constructed yet: its size comes from the probed features."""
        return isinstance(self.loss, type) and issubclass(self.loss, nn.Module)

    def built(
        self,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        *,
        num_samples: int | None = None,
    ) -> Term:
        """A copy of this term holding its stateful loss built for these feature shapes. The
        ``params`` went into the constructor, so the copy passes none to the forward."""
        module = self.loss.from_shapes(
            student_shape, teacher_shape, num_samples=num_samples, **self.params
        )
        return dataclasses.replace(self, loss=module, params={})

    def weight_at(self, epoch: int | Tensor) -> float | Tensor:
        if self.warmup_epochs <= 0:
            return self.weight
        if isinstance(
            epoch, Tensor
        ):  # the Distiller's epoch: no Python branch for torch.compile to guard
            return self.weight * (epoch / self.warmup_epochs).clamp(max=1.0)
        return self.weight * min(epoch / self.warmup_epochs, 1.0)

    def count(
        self,
        target: Tensor,
        mask: Tensor | None = None,
        labelled: Tensor | None = None,
    ) -> Tensor:
        """How many items the term's value is the mean of in a batch (float64, on the target's
        device): what gradient accumulation weighs the batch by. A loss that takes a ``mask``
        is a mean over the counted positions (true in ``mask``, every position without one;
        for ``token_ce`` only those whose target is not its ``ignore_index``); any other loss
        is taken as a mean over the batch's samples (``ce``, ``kd``, feature and ranking terms);
        with ``labelled`` (a transfer set's batch), a term that takes the target over its
        labelled samples only.
        """
        if labelled is not None and self.takes_target and not self.takes_mask:
            return labelled.sum(dtype=torch.float64)
        if not self.takes_mask:  # torch.full, not torch.tensor: a fill, not a host-to-GPU copy
            return torch.full((), float(len(target)), dtype=torch.float64, device=target.device)
        counted = torch.ones_like(target, dtype=torch.bool) if mask is None else mask != 0
        if self.ignore_index is not None:
            counted = counted & (target != self.ignore_index)
        return counted.sum(dtype=torch.float64)

    def __call__(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        index: Tensor | None = None,
        mask: Tensor | None = None,
        labelled: Tensor | None = None,
    ):
        """The term's value; ``labelled`` (per sample): a term that takes the target sees only
        the labelled samples (a transfer set's carry none), and is 0 on a batch of none."""
        if labelled is not None and self.takes_target:
            if not labelled.any():  # kept in the graph: every parameter still gets a gradient
                return student.sum() * 0.0
            if not labelled.all():
                student, target = student[labelled], target[labelled]
                teacher = None if teacher is None else teacher[labelled]
                index = None if index is None else index[labelled]
                mask = None if mask is None else mask[labelled]
        args = [student]
        if self.takes_teacher:
            args.append(teacher)
        if self.takes_target:
            args.append(target)
        extra = {"index": index} if self.takes_index else {}
        if self.takes_mask and mask is not None:
            extra["mask"] = mask
        return self.loss(*args, **self.params, **extra)


def teacher_taps(terms: Iterable[Term]) -> list[str]:
    """Teacher module names the terms read: the teacher must be tapped at these."""
    return list(dict.fromkeys(t.teacher for t in terms if t.teacher not in (None, LOGITS)))


# Which of the models' ``hint_layers`` (stage outputs, shallow to deep) a feature preset reads
# when the recipe names none, as the reference training scripts do: every stage for AT, NST and
# VID, the last for SP, the middle one for FitNet's hint.
LAYER_DEFAULTS = {"at": "all", "nst": "all", "vid": "all", "sp": "last", "fitnet": "middle"}


def default_layers(method: str, student: nn.Module, teacher: nn.Module) -> dict[str, list[str]]:
    """``student_layers`` / ``teacher_layers`` for a feature preset, from the models' stages.

    Stages are paired from the deep end when the two models have different numbers of them.
    Returns {} for methods that need no layers.
    """
    rule = LAYER_DEFAULTS.get(method)
    if rule is None:
        return {}
    student_stages, teacher_stages = (
        list(getattr(m, "hint_layers", ())) for m in (student, teacher)
    )
    if not student_stages or not teacher_stages:
        raise ValueError(
            f"method {method!r} compares intermediate features: set distill.params.student_layers "
            "and teacher_layers (module names), since these models do not list their stages"
        )
    depth = min(len(student_stages), len(teacher_stages))
    student_stages, teacher_stages = student_stages[-depth:], teacher_stages[-depth:]
    if rule == "last":
        pick = [depth - 1]
    elif rule == "middle":
        pick = [(depth - 1) // 2]
    else:
        pick = list(range(depth))
    return {
        "student_layers": [student_stages[i] for i in pick],
        "teacher_layers": [teacher_stages[i] for i in pick],
    }


def mixed_ce_weight(alpha: float, ce_weight: float | None) -> float:
    """The label term's weight of a preset that mixes ``(1 − α)·CE + α·KD``: ``1 − alpha``,
    unless ``ce_weight`` is given (the ``CE + λ·KD`` form). A mixing ``alpha`` outside [0, 1]
    would train with a negative weight on one of the two terms."""
    if ce_weight is not None:
        return ce_weight
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha={alpha:g} mixes (1 - alpha)·CE + alpha·KD and must lie in [0, 1]; "
            "set ce_weight too for the CE + alpha·KD form"
        )
    return 1.0 - alpha
