"""What every layer needs to know about a model and never more: how to call it on a batch's
``input`` and read its logits, the output type the losses see, how to reach the user's module
inside a wrapper, and how to move a batch. A leaf: it imports nothing of kdistill, so the
distiller, the taps, the trainer and the evaluators can all depend on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGITS = "logits"  # the name terms use for a model's output (anything else is a tap name)


@dataclass
class LazyLogits:
    """A language model's logits before they are multiplied out: the final hidden states and
    the output projection (``lm_head``). Over a vocabulary of 50k tokens the (B, L, V) logits
    are the largest tensor of a step; chunked losses (``kdistill.losses.chunked``) compute
    them a few positions at a time from this and never hold them all.

    Attributes:
        hidden: (B, L, H) final hidden states (after the last norm).
        weight: (V, H) output projection; ``logits = hidden @ weight.T + bias``.
        bias: (V,) or ``None``.
        product: the dtype of the head's product, autocast's where these were made (a bf16
            run multiplies its head in bf16 even where, as in HF's models, the residual stream
            and so the final hidden states stay float32); ``None`` outside autocast.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None
    product: torch.dtype | None = None

    def __post_init__(self):
        if self.product is None:
            self.product = autocast_dtype(self.hidden.device)

    @property
    def shape(self):
        """The shape the logits would have, (B, L, V)."""
        return (*self.hidden.shape[:-1], self.weight.shape[0])

    @property
    def device(self):
        return self.hidden.device

    def dim(self) -> int:
        return self.hidden.dim()

    def materialize(self) -> Tensor:
        """The full (B, L, V) logits, for a consumer that needs them all at once."""
        return F.linear(self.hidden, self.weight, self.bias)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast gives matrix products on ``device``'s type here, ``None`` when off."""
    kind = torch.device(device).type
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    except RuntimeError:  # a device autocast has no mode for ("meta": shapes only)
        return None


@dataclass
class ModelOutput:
    """Logits and tapped features of one forward pass, the same type live or cached. The
    logits may be ``LazyLogits`` when chunked losses asked for them."""

    logits: Tensor | LazyLogits
    features: dict[str, Tensor] = field(default_factory=dict)

    def get(self, name: str) -> Tensor:
        return self.logits if name == LOGITS else self.features[name]


# A batch tokenised twice (a student with a tokenizer of its own) carries the teacher's ids
# beside the student's, as ``teacher_input_ids`` / ``teacher_attention_mask``. A model built as
# the teacher is marked with this attribute and reads those keys, renamed; every other model
# reads the rest. A plain attribute: it is not in the state dict, so weights load as ever.
TEACHER_PREFIX = "teacher_"
READS_TEACHER_INPUTS = "kdistill_reads_teacher_inputs"
# Across tokenizers a batch's teacher side also carries the alignment (``teacher_target``,
# ``teacher_chunk``, ``teacher_student_chunk``; ``kdistill.data.cross_tokenizer``): read by a
# model marked ``READS_ALIGNMENT`` (``CrossTokenizerTeacher``), not by the teacher model itself.
ALIGNMENT_KEYS = ("target", "chunk", "student_chunk")
READS_ALIGNMENT = "kdistill_reads_alignment"


def model_inputs(model: nn.Module, inputs):
    """The part of a batch's ``input`` that ``model`` reads (see ``TEACHER_PREFIX``)."""
    if not isinstance(inputs, Mapping) or not any(k.startswith(TEACHER_PREFIX) for k in inputs):
        return inputs
    inner = unwrap(model)
    if getattr(inner, READS_TEACHER_INPUTS, False):
        own = {
            k.removeprefix(TEACHER_PREFIX): v
            for k, v in inputs.items()
            if k.startswith(TEACHER_PREFIX)
        }
        if getattr(inner, READS_ALIGNMENT, False):
            return own
        return {k: v for k, v in own.items() if k not in ALIGNMENT_KEYS}
    return {k: v for k, v in inputs.items() if not k.startswith(TEACHER_PREFIX)}


def gives_lazy_logits(model: nn.Module) -> bool:
    """Whether ``model`` can return ``LazyLogits`` (``forward(..., lazy_logits=True)``, as
    kdistill's Hugging Face causal-LM wrapper does). A forward hook on the model itself (a
    teacher's vocabulary map) edits the logits it returns, so such a model gives them whole."""
    inner = unwrap(model)
    # FSDP's own hooks (a sharded unit gathering and freeing its weights) leave logits alone.
    edits = [
        hook
        for hook in inner._forward_hooks.values()
        if not getattr(hook, "__module__", "").startswith("torch.distributed.fsdp")
    ]
    return bool(getattr(inner, "supports_lazy_logits", False)) and not edits


def call_model(model: nn.Module, inputs, *, lazy_logits: bool = False) -> Tensor | LazyLogits:
    """Run a model on a batch's ``input`` and return its logits.

    Takes a tensor, or a mapping of keyword tensors (Hugging Face ``input_ids`` /
    ``attention_mask``); reads logits from a tensor, a ``.logits`` attribute (Hugging Face
    ``ModelOutput``), a ``"logits"`` key, or the first element of a tuple. ``lazy_logits``
    asks for ``LazyLogits`` where the model can give them (``gives_lazy_logits``), and for
    ordinary logits otherwise.
    """
    inputs = model_inputs(model, inputs)
    extra = {"lazy_logits": True} if lazy_logits and gives_lazy_logits(model) else {}
    output = model(**inputs, **extra) if isinstance(inputs, Mapping) else model(inputs, **extra)
    # An output the losses read whole (a cross-tokenizer teacher's logits with its alignment)
    if isinstance(output, (Tensor, LazyLogits)) or getattr(output, "read_whole", False):
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


__all__ = [
    "ALIGNMENT_KEYS",
    "LOGITS",
    "READS_ALIGNMENT",
    "READS_TEACHER_INPUTS",
    "TEACHER_PREFIX",
    "LazyLogits",
    "ModelOutput",
    "call_model",
    "gives_lazy_logits",
    "model_inputs",
    "to_device",
    "unwrap",
]
