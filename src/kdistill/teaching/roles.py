"""The vocabulary shared by the teaching modes: the ``Role`` a mode produces, and the ``School``
it is given (what a mode may ask of the run that hosts it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from kdistill.distiller import Distiller


@dataclass
class Role:
    """A model a run produced, and how to find and rebuild it.

    ``architecture`` is what rebuilds the model without the run: ``{"model": name, "kwargs":
    {...}}`` for one model, ``{"ensemble": [...], "combine": ..., "weights": ...}`` for an
    ensemble; ``file`` is its weights under ``checkpoints/``.
    """

    model: nn.Module
    architecture: dict[str, Any]
    file: str
    seconds: float = 0.0
    source: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What ``summary.json`` keeps of the role (``roles``)."""
        return {
            "architecture": self.architecture,
            "file": f"checkpoints/{self.file}",
            **({"source": self.source} if self.source else {}),
        }


Roles = dict[str, Role]  # "teacher", "assistant", "scratch", "generation_1", ..., "student"
# The pseudo-label baseline's phase and role (data.pseudo_labels): the student trained on the
# labels and the teacher's hard labels of the transfer set (self-training).
PSEUDO_LABELS = "pseudo_labels"


class School(Protocol):
    """What a teaching mode may ask of the run that hosts it."""

    distill_terms: list  # the recipe's terms (or its method's)
    scratch_terms: list  # the task's label-only terms

    def build(self, architecture: str, *, reseed: bool = True) -> nn.Module:
        """A new model of ``"student"``, ``"teacher"`` or ``"assistant"``, its weights drawn
        from the run's seed (``reseed``) or from where the random stream stands."""

    def architecture(self, architecture: str) -> dict[str, Any]:
        """How ``build(architecture)`` is rebuilt elsewhere (for ``Role.architecture``)."""

    def obtain_teacher(self, member: int | None = None) -> Role:
        """The recipe's teacher (or ensemble member ``member``): loaded, reused or trained."""

    def frozen(self, model: nn.Module, *, cached: bool = False):
        """``model`` as a frozen teacher tapped for the terms (its cached outputs if ``cached``)."""

    def distiller(self, student: nn.Module, terms: list, teacher) -> Distiller:
        """The trainable module of ``student`` with ``terms`` against ``teacher`` (or ``None``)."""

    def fit(self, phase: str, distiller: Distiller, teacher) -> float:
        """Train ``distiller`` as phase ``phase`` into ``checkpoints/<phase>.safetensors``
        (resumable); returns its training seconds."""

    def pseudo_label(self, teacher) -> None:
        """Label the transfer set with ``teacher``'s hard labels, for the phase
        ``PSEUDO_LABELS`` (which then trains on the labels and those)."""

    def keep(self, model: nn.Module, file: str) -> None:
        """Save (or, when resuming a finished run, restore) ``model`` as ``checkpoints/<file>``."""


def train_student(
    school: School, phase: str, terms: list, teacher, *, architecture: str = "student"
) -> Role:
    """Build a model of ``architecture`` and train it as ``phase`` with ``terms`` against
    ``teacher`` (``None``: from the labels alone)."""
    model = school.build(architecture)
    distiller = school.distiller(model, terms, teacher)
    seconds = school.fit(phase, distiller, teacher)
    return Role(
        model,
        school.architecture(architecture),
        f"{phase}.safetensors",
        seconds,
        info={"connector_params": training_extras(distiller)},
    )


def training_extras(distiller: Distiller) -> int:
    """Trainable parameters a method adds beside the student (connectors, embeddings, stateful
    losses such as CRD's projections): what the method costs in training, not in deployment."""
    return sum(
        p.numel() for name, p in distiller.named_parameters() if not name.startswith("student.")
    )
