"""DistilBERT-style initialisation: a shallower student starts from the teacher's weights,
taking one teacher layer out of two.

Sanh, Debut, Chaumond, Wolf, "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter", NeurIPS 2019 EMC² workshop, arXiv:1910.01108, section 3: "we initialize
the student from the teacher by taking one layer out of two", exploiting the common
dimensionality of the two networks. Embeddings, final norms and heads are copied as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def layer_stack(model: nn.Module) -> str:
    """Name of the model's stack of transformer layers: the ``nn.ModuleList`` with parameters
    and the most entries (``blocks``, ``model.bert.encoder.layer``, ``model.transformer.h``)."""
    stacks = [
        (len(module), name)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module)
        and any(True for _ in module.parameters())
    ]
    if not stacks:
        raise ValueError(
            f"{type(model).__name__} has no stack of layers (an nn.ModuleList with parameters)"
        )
    return max(stacks)[1]


def every_other_layer(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers 0, 2, 4, ... (one out of ``teacher_layers // student_layers``)."""
    stride = max(teacher_layers // student_layers, 1)
    return list(range(0, teacher_layers, stride))[:student_layers]


@torch.no_grad()
def init_from_teacher(
    student: nn.Module, teacher: nn.Module, layers: list[int] | None = None
) -> dict[int, int]:
    """Copy the teacher's weights into a student of the same architecture and width.

    Student layer ``j`` gets teacher layer ``layers[j]`` (default: every other layer); every
    other tensor (embeddings, norms, pooler, head) is copied from the tensor of the same name.

    Returns:
        The map {student layer: teacher layer} that was applied.

    Raises:
        ValueError: naming the first tensor the teacher lacks or whose shape differs (a student
        of another width cannot be initialised this way).
    """
    s_stack, t_stack = layer_stack(student), layer_stack(teacher)
    s_count = len(student.get_submodule(s_stack))
    t_count = len(teacher.get_submodule(t_stack))
    layers = list(layers) if layers is not None else every_other_layer(t_count, s_count)
    if len(layers) != s_count or not all(0 <= t < t_count for t in layers):
        raise ValueError(
            f"init_from_teacher: {s_count} student layers need {s_count} teacher layers in "
            f"0..{t_count - 1}, got {layers}"
        )
    teacher_state = teacher.state_dict()
    new_state = {}
    for name, tensor in student.state_dict().items():
        source = name
        if name.startswith(s_stack + "."):
            index, rest = name[len(s_stack) + 1 :].split(".", 1)
            source = f"{t_stack}.{layers[int(index)]}.{rest}"
        if source not in teacher_state:
            raise ValueError(
                f"init_from_teacher: the teacher has no {source!r} for the student's {name!r}"
            )
        if teacher_state[source].shape != tensor.shape:
            raise ValueError(
                f"init_from_teacher: {name!r} is {tuple(tensor.shape)} in the student but "
                f"{tuple(teacher_state[source].shape)} in the "
                "teacher; the student needs the teacher's width"
            )
        new_state[name] = teacher_state[source].clone()
    student.load_state_dict(new_state)
    return dict(enumerate(layers))


__all__ = ["every_other_layer", "init_from_teacher", "layer_stack"]
