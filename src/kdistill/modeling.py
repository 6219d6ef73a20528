"""What every layer needs to know about a model and never more: how to call it on a batch's
``input`` and read its logits, the output type the losses see, how to reach the user's module
inside a wrapper, and how to move a batch. A leaf: it imports nothing of kdistill, so the
distiller, the taps, the trainer and the evaluators can all depend on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

LOGITS = "logits"  # the name terms use for a model's output (anything else is a tap name)


@dataclass
class ModelOutput:
    """Logits and tapped features of one forward pass, the same type live or cached."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def get(self, name: str) -> Tensor:
        return self.logits if name == LOGITS else self.features[name]


# A batch tokenised twice (a student with a tokenizer of its own) carries the teacher's ids
# beside the student's, as ``teacher_input_ids`` / ``teacher_attention_mask``. A model built as
# the teacher is marked with this attribute and reads those keys, renamed; every other model
# reads the rest. A plain attribute: it is not in the state dict, so weights load as ever.
TEACHER_PREFIX = "teacher_"
READS_TEACHER_INPUTS = "kdistill_reads_teacher_inputs"


def model_inputs(model: nn.Module, inputs):
    """The part of a batch's ``input`` that ``model`` reads (see ``TEACHER_PREFIX``)."""
    if not isinstance(inputs, Mapping) or not any(k.startswith(TEACHER_PREFIX) for k in inputs):
        return inputs
    if getattr(unwrap(model), READS_TEACHER_INPUTS, False):
        return {k.removeprefix(TEACHER_PREFIX): v for k, v in inputs.items() if k.startswith(TEACHER_PREFIX)}
    return {k: v for k, v in inputs.items() if not k.startswith(TEACHER_PREFIX)}


def call_model(model: nn.Module, inputs) -> Tensor:
    """Run a model on a batch's ``input`` and return its logits.

    Takes a tensor, or a mapping of keyword tensors (Hugging Face ``input_ids`` /
    ``attention_mask``); reads logits from a tensor, a ``.logits`` attribute (Hugging Face
    ``ModelOutput``), a ``"logits"`` key, or the first element of a tuple.
    """
    inputs = model_inputs(model, inputs)
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot read logits from a {type(output).__name__} model output")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP/FSDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel) or (
            type(model).__name__ == "FullyShardedDataParallel"
        ):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def to_device(batch, device, *, non_blocking: bool = True):
    """A batch (a tensor, or a dict of them, nested) on ``device``; other values unchanged."""
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking=non_blocking) for k, v in batch.items()}
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    return batch


__all__ = ["LOGITS", "READS_TEACHER_INPUTS", "TEACHER_PREFIX", "ModelOutput", "call_model", "model_inputs", "to_device", "unwrap"]
