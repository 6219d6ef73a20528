"""The teacher and student checked as a pair, once, on one batch, before anything trains: both
doors (``distill()`` and a recipe's run and preflight) call ``check_pair``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.distiller import Teacher
from kdistill.errors import UserError
from kdistill.modeling import call_model
from kdistill.teachers.cross_tokenizer import trim_padded_vocabularies


class MismatchError(UserError, ValueError):
    """Teacher, student and data that cannot work together; the message names both sides."""


def _describe(model: nn.Module) -> str:
    parameter = next(iter(model.parameters()), None)
    if parameter is None:
        return f"{type(model).__name__} (no parameters)"
    return f"{type(model).__name__} ({parameter.dtype} on {parameter.device})"


def _describe_input(inputs) -> str:
    if isinstance(inputs, dict):
        return ", ".join(
            f"{k}: {tuple(v.shape)} {v.dtype} on {v.device}" for k, v in inputs.items()
        )
    return f"{tuple(inputs.shape)} {inputs.dtype} on {inputs.device}"


def check_pair(
    teacher: Teacher, student: nn.Module, example: dict, *, tokenizer_size: int | None = None
) -> torch.Size:
    """Run teacher and student once on ``example``: inputs of another dtype or device than a
    model's weights, and models that score different numbers of classes, fail here with one
    error naming both sides, rather than deep inside a layer or a loss. Returns the shape of
    the student's outputs.

    ``tokenizer_size``: language models sharing a tokenizer of that many entries whose logit
    rows differ by padding only are cut to their shared rows, with one line saying so
    (``kdistill.teachers.cross_tokenizer.trim_padded_vocabularies``)."""
    was_training = student.training
    outputs = {}
    try:
        for role, run, model in (
            ("teacher", lambda: teacher(example).logits, teacher.module),
            ("student", lambda: call_model(student.eval(), example["input"]), student),
        ):
            try:
                with torch.no_grad():
                    outputs[role] = run()
            except (RuntimeError, ValueError, TypeError) as error:
                raise MismatchError(
                    f"the {role}, {_describe(model)}, cannot run on the inputs "
                    f"({_describe_input(example['input'])}): {str(error).splitlines()[0][:200]}"
                ) from None
    finally:
        student.train(was_training)
    if getattr(outputs["teacher"], "read_whole", False):
        return outputs["student"].shape  # across tokenizers: the losses compare aligned chunks
    teacher_outputs, student_outputs = outputs["teacher"].shape[-1], outputs["student"].shape[-1]
    if tokenizer_size and trim_padded_vocabularies(
        teacher.module, student, teacher_outputs, student_outputs, tokenizer_size
    ):
        teacher_outputs = student_outputs = min(teacher_outputs, student_outputs)
    if teacher_outputs != student_outputs:
        raise MismatchError(
            f"the teacher has {teacher_outputs} outputs but the student has {student_outputs}: "
            "build both for the same classes (or vocabulary), or map one onto the other"
        )
    target = example.get("target")
    if (
        target is not None
        and target.dtype in (torch.int64, torch.int32)
        and target.numel()
        and int(target.max()) >= student_outputs
    ):
        raise MismatchError(
            f"the data has label {int(target.max())} but the models have {student_outputs} "
            f"outputs: labels are 0..{student_outputs - 1}"
        )
    return outputs["student"].shape
