"""The parts of a distillation method that are not loss terms: how the distilled student starts
and what its batches are. Read from ``distill.params`` by the pipeline (and not passed to the
preset), so a recipe configures them next to the method's other settings::

    distill:
      params:
        init_from_teacher: true        # DistilBERT: teacher layers 0, 2, 4, ... (or a list)
        on_policy: {fraction: 0.5, continuation: 16}   # GKD: student-sampled sequences
        vocab_map: [...]               # teacher token id of each student token id
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdistill.errors import ConfigError
from kdistill.models.transfer import init_from_teacher
from kdistill.teachers.vocab import map_teacher_vocabulary
from kdistill.training.sampling import OnPolicy

RUN_PARAMS = ("init_from_teacher", "on_policy", "vocab_map")


def preset_params(params: dict[str, Any]) -> dict[str, Any]:
    """``distill.params`` without the run-level keys: what a preset receives."""
    return {k: v for k, v in params.items() if k not in RUN_PARAMS}


def prepare_teacher(params: dict[str, Any], teacher: nn.Module) -> None:
    """Restrict the teacher's logits to the student's vocabulary when ``vocab_map`` is set."""
    if params.get("vocab_map") is not None:
        map_teacher_vocabulary(teacher, params["vocab_map"])


def prepare_student(
    params: dict[str, Any],
    student: nn.Module,
    teacher: nn.Module | None,
    *,
    seed: int = 0,
):
    """Initialise the distilled student from the teacher (``init_from_teacher``) and return its
    batch transform (``on_policy``, its draws seeded by the run's ``seed`` unless it names its
    own), or ``None``. ``teacher`` is ``None`` when only cached teacher outputs exist
    (``teacher.cache``), which neither option can use."""
    layers = params.get("init_from_teacher")
    on_policy = params.get("on_policy")
    if (layers or on_policy) and teacher is None:
        option = "init_from_teacher" if layers else "on_policy"
        raise ConfigError(
            f"distill.params.{option} needs the live teacher (its weights, or its scores of newly "
            "sampled sequences), not cached outputs: set teacher.cache=false"
        )
    if layers:
        try:
            init_from_teacher(student, teacher, None if layers is True else list(layers))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"distill.params.init_from_teacher: {error}") from None
    if not on_policy:
        return None
    try:
        return OnPolicy(student, **{"seed": seed, **({} if on_policy is True else dict(on_policy))})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"distill.params.on_policy: {error}") from None


__all__ = ["RUN_PARAMS", "prepare_student", "prepare_teacher", "preset_params"]
