"""Distillation methods: ``Term``s, and one dict of named presets (``PRESETS``) whose function
signatures are the methods' settings. A recipe's ``method: dkd`` with ``distill`` settings is
``PRESETS["dkd"](**settings)``; a setting the preset does not take is an error naming the valid
ones, never silently dropped.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from kdistill.methods.cross_tokenizer import cross_tokenizer
from kdistill.methods.presets import (
    attention_transfer,
    contrastive_representation,
    correlation_congruence,
    decoupled_kd,
    dist_kd,
    fitnet,
    hinton_kd,
    logit_standardized_kd,
    neuron_selectivity_transfer,
    normalized_kd,
    probabilistic_transfer,
    relational_kd,
    scratch,
    similarity_preserving,
    variational_information,
)
from kdistill.methods.terms import (
    LAYER_DEFAULTS,
    PENULTIMATE,
    Term,
    default_layers,
    mixed_ce_weight,
    teacher_taps,
)
from kdistill.methods.transformer import distilbert, minilm, tinybert, token_kd
from kdistill.modeling import LOGITS

PRESETS: dict[str, Callable[..., list[Term]]] = {
    "kd": hinton_kd,
    "dkd": decoupled_kd,
    "dist": dist_kd,
    "lskd": logit_standardized_kd,
    "nkd": normalized_kd,
    "fitnet": fitnet,
    "at": attention_transfer,
    "nst": neuron_selectivity_transfer,
    "sp": similarity_preserving,
    "vid": variational_information,
    "rkd": relational_kd,
    "pkt": probabilistic_transfer,
    "cc": correlation_congruence,
    "crd": contrastive_representation,
    "scratch": scratch,
    "tinybert": tinybert,
    "minilm": minilm,
    "distilbert": distilbert,
    "token_kd": token_kd,
    "cross_tokenizer": cross_tokenizer,
}


class UnknownSettingError(ValueError):
    """A setting that the method's preset does not take."""


def _check_method(name: str) -> Callable[..., list[Term]]:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; `kdistill list methods` shows all")
    return PRESETS[name]


def method_settings(name: str) -> dict[str, object]:
    """The settings of a preset and their defaults (``inspect.Parameter.empty`` if required)."""
    return {p.name: p.default for p in inspect.signature(_check_method(name)).parameters.values()}


def describe_method(name: str) -> str:
    """The preset's one-line description."""
    doc = (PRESETS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def describe_settings(name: str) -> str:
    """The preset's settings and their defaults, as a recipe's ``distill`` section sets them."""
    shown = [
        f"{k}={v!r}" if v is not inspect.Parameter.empty else k
        for k, v in method_settings(name).items()
    ]
    return ", ".join(shown) or "no settings"


def preset_terms(name: str, **settings) -> list[Term]:
    """The terms of a named method built with ``settings`` (``None`` values mean the method's
    own default). A setting the preset does not take raises ``UnknownSettingError``, naming it,
    the closest valid name and the valid ones."""
    builder = _check_method(name)
    valid = method_settings(name)
    given = {k: v for k, v in settings.items() if v is not None}
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listed = ", ".join(valid) or "none"
            raise UnknownSettingError(
                f"method {name!r} has no setting {key!r} ({hint}its settings: {listed})"
            )
    return builder(**given)


__all__ = [
    "LAYER_DEFAULTS",
    "LOGITS",
    "PENULTIMATE",
    "PRESETS",
    "Term",
    "UnknownSettingError",
    "attention_transfer",
    "contrastive_representation",
    "correlation_congruence",
    "cross_tokenizer",
    "decoupled_kd",
    "default_layers",
    "describe_method",
    "describe_settings",
    "dist_kd",
    "distilbert",
    "fitnet",
    "hinton_kd",
    "logit_standardized_kd",
    "method_settings",
    "minilm",
    "mixed_ce_weight",
    "neuron_selectivity_transfer",
    "normalized_kd",
    "preset_terms",
    "probabilistic_transfer",
    "relational_kd",
    "scratch",
    "similarity_preserving",
    "teacher_taps",
    "tinybert",
    "token_kd",
    "variational_information",
]
