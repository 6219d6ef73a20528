"""The model zoo: one dict from name to builder, one door (``create_model``).

Every builder takes ``num_classes`` and ``input_shape`` (C, H, W) and returns an ``nn.Module``
with ``forward_features`` / ``forward_head``. The tests run over every entry of ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kdistill.models.cnn import cnn, cnn_large, cnn_small, cnn_tiny, lenet
from kdistill.models.hf import hf, minilm_l6
from kdistill.models.mlp import mlp, mlp_large, mlp_tiny
from kdistill.models.mobilenetv2 import mobilenetv2
from kdistill.models.recsys import neumf, neumf_large, neumf_small
from kdistill.models.resnet import resnet8, resnet8x4, resnet20, resnet32x4, resnet56
from kdistill.models.rnn import bilstm, conv1d, gru, gru_tiny
from kdistill.models.shufflenetv2 import shufflenetv2
from kdistill.models.text import bilstm as text_bilstm
from kdistill.models.text import text_cnn
from kdistill.models.transformer import gpt, transformer_classifier
from kdistill.models.vgg import vgg8, vgg13
from kdistill.models.wrn import wrn_16_2, wrn_40_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "mlp_tiny": mlp_tiny,
    "mlp_large": mlp_large,
    "cnn": cnn,
    "cnn_tiny": cnn_tiny,
    "cnn_small": cnn_small,
    "cnn_large": cnn_large,
    "lenet": lenet,
    # The CIFAR-100 zoo of the CRD / RepDistiller / mdistiller benchmarks (same depths and
    # widths), with adaptive pooling so 28×28 single-channel images work too.
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_2": wrn_16_2,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    # Sequence models over (T, F) features (speech): images are read row by row.
    "bilstm": bilstm,
    "gru": gru,
    "gru_tiny": gru_tiny,
    "conv1d": conv1d,
}

# Models over token ids (word pieces, characters), not float arrays: apart from MODELS, whose
# tests feed every entry images; create_model and describe_model see both dicts.
TEXT_MODELS: dict[str, Callable[..., nn.Module]] = {
    "gpt": gpt,
    "text_transformer": transformer_classifier,
    "text_bilstm": text_bilstm,
    "text_cnn": text_cnn,
    "hf": hf,
    "minilm_l6": minilm_l6,
}

# Recommenders: user and candidate-item ids in (keyword tensors), (rating, preference) per
# candidate out; apart from MODELS for the same reason as TEXT_MODELS.
RECSYS_MODELS: dict[str, Callable[..., nn.Module]] = {
    "neumf": neumf,
    "neumf_large": neumf_large,
    "neumf_small": neumf_small,
}


class UnknownModelError(ValueError):
    """A model name that is not in the zoo."""


class ModelSettingError(TypeError, ValueError):
    """A setting the builder cannot use (a negative width, a WRN depth that is not 6n + 4): a
    bad argument to the call, so callers that name the recipe's ``kwargs`` for an unknown
    keyword (TypeError) name it for this too; still the ValueError the builders raise."""


def list_models() -> list[str]:
    return sorted(MODELS)


def list_text_models() -> list[str]:
    return sorted(TEXT_MODELS)


def list_recsys_models() -> list[str]:
    return sorted(RECSYS_MODELS)


def describe_model(name: str) -> str:
    """First line of the builder's docstring, for ``kdistill list models``."""
    doc = {**MODELS, **TEXT_MODELS, **RECSYS_MODELS}[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model by name, e.g. ``create_model("cnn", width=16, num_classes=10)``."""
    try:
        builder = MODELS[name] if name in MODELS else {**TEXT_MODELS, **RECSYS_MODELS}[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, [*MODELS, *TEXT_MODELS, *RECSYS_MODELS], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint}; `kdistill list models` shows all"
        ) from None
    negative = [f"{key}={value}" for key, value in kwargs.items() if type(value) is int and value < 0]
    if negative:
        raise ModelSettingError(f"{name}: {negative[0]} is negative; sizes and counts are whole numbers >= 0")
    try:
        return builder(**kwargs)
    except (RuntimeError, ValueError) as error:  # e.g. a zero width torch cannot allocate
        raise ModelSettingError(f"{name}: {str(error).splitlines()[0][:200]}") from None


__all__ = [
    "MODELS",
    "RECSYS_MODELS",
    "TEXT_MODELS",
    "ModelSettingError",
    "UnknownModelError",
    "create_model",
    "describe_model",
    "list_models",
    "list_recsys_models",
    "list_text_models",
]
