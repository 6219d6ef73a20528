"""What a distillation compares: ``Term``s, and named presets of terms with published weights.

A term says which student output is compared with which teacher output (``"logits"`` or a
module name read through a ``FeatureTap``), with which loss, at what weight, optionally through
a trainable connector and with a warm-up of its weight. A preset is a function of the
hyper-parameters a user commonly sets (temperature, alpha) that returns a list of terms.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from kdistill.losses import LOSSES

LOGITS = "logits"


@dataclass
class Term:
    """One weighted loss of the distillation objective.

    Args:
        name: key of this term in the loss dict (``"loss/<name>"``); unique per distiller.
        loss: a name in ``kdistill.losses.LOSSES``, a function ``(student, teacher, [target],
            **params)``, or an ``nn.Module`` for losses with learned state (VID, CRD).
        weight: multiplier in the total loss.
        student: ``"logits"`` or the module name of the student feature to compare.
        teacher: ``"logits"``, a module name of the teacher, or ``None`` for losses against the
            labels only (cross-entropy).
        connector: ``None``, or a connector kind (``"auto"``, ``"linear"``, ``"conv"``) that maps
            the student feature to the teacher feature's shape, sized by probing.
        params: keyword hyper-parameters passed to the loss (``temperature=4.0``, ...).
        warmup_epochs: the weight ramps as ``min(epoch / warmup_epochs, 1)`` with 1-based epochs
            (DKD's warm-up, Zhao et al. 2022); 0 means full weight from the start.
    """

    name: str
    loss: str | Callable | nn.Module
    weight: float = 1.0
    student: str = LOGITS
    teacher: str | None = LOGITS
    connector: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0

    def __post_init__(self):
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                import difflib

                close = difflib.get_close_matches(self.loss, LOSSES, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"term {self.name!r}: unknown loss {self.loss!r}{hint}")
            self.loss = LOSSES[self.loss]
        function = self.loss.forward if isinstance(self.loss, nn.Module) else self.loss
        parameters = inspect.signature(function).parameters
        positional = [
            p.name for p in parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        # Argument order is student, teacher, target (DESIGN.md); a loss whose second
        # positional argument is `target` compares with the labels only.
        self.takes_target = "target" in positional
        self.takes_teacher = len(positional) >= 2 and positional[1] != "target"
        self.takes_index = "index" in parameters  # memory-bank methods (CRD) find samples by it
        self.takes_mask = "mask" in parameters  # token losses skip padding positions
        if not self.takes_teacher:
            self.teacher = None
        elif self.teacher is None:
            raise ValueError(f"term {self.name!r}: loss needs a teacher output; set teacher=")

    def weight_at(self, epoch: int) -> float:
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(epoch / self.warmup_epochs, 1.0)

    def __call__(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, index: Tensor | None = None,
        mask: Tensor | None = None,
    ):
        args = [student]
        if self.takes_teacher:
            args.append(teacher)
        if self.takes_target:
            args.append(target)
        extra = {"index": index} if self.takes_index else {}
        if self.takes_mask and mask is not None:
            extra["mask"] = mask
        return self.loss(*args, **self.params, **extra)


# --- presets ---------------------------------------------------------------------------------
# Each returns the terms of one published method. Weights are the papers' / reference
# repositories' defaults; the recipe's `distill` section overrides temperature and alpha.


def hinton_kd(*, temperature: float = 4.0, alpha: float = 0.9, ce_weight: float | None = None):
    """Hinton KD: (1−α)·CE + α·T²·KL(p_T ‖ p_S). Set ``ce_weight`` for CE + λ·KL forms.

    Defaults CE 0.1 + KD 0.9 at T=4 follow RepDistiller and mdistiller's CIFAR recipes.
    """
    return [
        Term("ce", "ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
    ]


def scratch(**_ignored):
    """No teacher: cross-entropy on the labels only (the baseline every method is judged by)."""
    return [Term("ce", "ce", weight=1.0, teacher=None)]


PRESETS: dict[str, Callable[..., list[Term]]] = {
    "kd": hinton_kd,
    "scratch": scratch,
}


def describe_method(name: str) -> str:
    doc = PRESETS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def preset_terms(name: str, **hyper) -> list[Term]:
    """The terms of a named method; hyper-parameters the preset does not take are ignored."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; `kdistill list methods` shows all")
    builder = PRESETS[name]
    accepted = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return builder(**hyper)
    return builder(**{k: v for k, v in hyper.items() if k in accepted and v is not None})
