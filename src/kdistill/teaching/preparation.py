"""The parts of a distillation method that are not loss terms: how the distilled student starts
and what its batches are. Read from ``distill.params`` by the pipeline (and not passed to the
preset), so a recipe configures them next to the method's other settings::

    distill:
      params:
        init_from_teacher: true        # DistilBERT: teacher layers 0, 2, 4, ... (or a list)
        on_policy: {fraction: 0.5, continuation: 16}   # GKD: student-sampled sequences
        sequence_kd: {fraction: 1.0, sequences: 256, prompt: 32}   # the teacher's generations
        vocab_map: [...]               # teacher token id of each student token id
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdistill.errors import ConfigError
from kdistill.models.transfer import init_from_teacher
from kdistill.teachers.vocab import map_teacher_vocabulary
from kdistill.training.sampling import OnPolicy
from kdistill.training.sequences import SequenceKD

RUN_PARAMS = ("init_from_teacher", "on_policy", "sequence_kd", "vocab_map")
# What distill.params.sequence_kd takes besides the transform's own fraction (SequenceKD): how
# the teacher's sequences are made (kdistill.training.sequences.teacher_sequences).
SEQUENCE_DEFAULTS = {"sequences": 256, "prompt": 32, "temperature": 0.0, "top_k": None}


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
    sequences=None,
):
    """Initialise the distilled student from the teacher (``init_from_teacher``) and return its
    batch transform (``on_policy``, or ``sequence_kd`` over the teacher's ``sequences``, a
    callable that makes them from the teacher and the settings; draws seeded by the run's
    ``seed`` unless the option names its own), or ``None``. ``teacher`` is ``None`` when only
    cached teacher outputs exist (``teacher.cache``), which none of them can use."""
    layers = params.get("init_from_teacher")
    on_policy = params.get("on_policy")
    sequence_kd = params.get("sequence_kd")
    if on_policy and sequence_kd:
        raise ConfigError(
            "distill.params: on_policy and sequence_kd each choose what a batch holds; set one"
        )
    if (layers or on_policy or sequence_kd) and teacher is None:
        option = "init_from_teacher" if layers else "on_policy" if on_policy else "sequence_kd"
        raise ConfigError(
            f"distill.params.{option} needs the live teacher (its weights, or its scores of newly "
            "sampled sequences), not cached outputs: set teacher.cache=false"
        )
    if layers:
        try:
            init_from_teacher(student, teacher, None if layers is True else list(layers))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"distill.params.init_from_teacher: {error}") from None
    if sequence_kd:
        settings = sequence_settings(sequence_kd, seed)
        made = sequences(teacher, {k: settings[k] for k in (*SEQUENCE_DEFAULTS, "seed")})
        try:
            return SequenceKD(
                made, settings["prompt"], fraction=settings["fraction"], seed=settings["seed"]
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"distill.params.sequence_kd: {error}") from None
    if not on_policy:
        return None
    try:
        return OnPolicy(student, **{"seed": seed, **({} if on_policy is True else dict(on_policy))})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"distill.params.on_policy: {error}") from None


def sequence_settings(given, seed: int = 0) -> dict[str, Any]:
    """``distill.params.sequence_kd`` (``true`` or a mapping) with its defaults, checked: one
    ``ConfigError`` line naming the setting."""
    settings = {"fraction": 1.0, "seed": seed, **SEQUENCE_DEFAULTS}
    if given is not True:
        if not isinstance(given, dict) or set(given) - set(settings):
            raise ConfigError(
                f"distill.params.sequence_kd: true or a mapping of {', '.join(settings)}; "
                f"got {given!r}"
            )
        settings.update(given)
    fraction, count, prompt = settings["fraction"], settings["sequences"], settings["prompt"]
    temperature, top_k = settings["temperature"], settings["top_k"]
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ConfigError(f"distill.params.sequence_kd.fraction: {fraction!r}; a share in (0, 1]")
    for name, value in (("sequences", count), ("prompt", prompt)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
            raise ConfigError(f"distill.params.sequence_kd.{name}: {value!r}; a whole number ≥ 1")
    if not (isinstance(temperature, int | float) and 0 <= temperature <= 100):
        raise ConfigError(
            f"distill.params.sequence_kd.temperature: {temperature!r}; 0 (greedy) to 100"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"distill.params.sequence_kd.top_k: {top_k!r}; null or a whole number")
    return settings


__all__ = [
    "RUN_PARAMS",
    "SEQUENCE_DEFAULTS",
    "prepare_student",
    "prepare_teacher",
    "preset_params",
    "sequence_settings",
]
