"""What a model was built with: every argument, defaults included.

A recipe names a zoo model and the few settings it changes (``student.model: mlp_tiny``); the
builder fills the rest in. Those defaults must not stay invisible (``mlp_tiny`` once became
128 units wide without a word), so every zoo class records its constructor's arguments, and a
run prints them, with the parameter count, in its ``config.yaml`` and in ``kdistill check``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

from torch import nn

SETTINGS = "settings"
# Keys of a Hugging Face config that say where it came from, not what was built.
_HF_BOOKKEEPING = {"transformers_version", "architectures", "dtype", "torch_dtype"}


def records_settings(init):
    """Decorate a model class's ``__init__`` so the instance keeps the arguments it was built
    with (after ``apply_defaults``) as ``model.settings``, in signature order."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        arguments: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = value
        # A subclass's __init__ runs last and knows its own arguments best: it overwrites.
        object.__setattr__(self, SETTINGS, arguments)

    return wrapper


def _plain(value: Any) -> Any:
    """A value as YAML writes it: tuples as lists, anything else unusual as its repr."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return repr(value)


def model_settings(model: nn.Module) -> dict[str, Any]:
    """Every argument ``model`` was built with: the recorded constructor arguments of a zoo
    class (a config dataclass spelled out), or a Hugging Face model's config where it differs
    from the library's defaults. Empty for a model that records nothing (a user's own class
    built by a factory)."""
    recorded = getattr(model, SETTINGS, None)
    if isinstance(recorded, dict):
        spelled: dict[str, Any] = {}
        for name, value in recorded.items():  # GPT(config): the config's fields are the settings
            is_config = dataclasses.is_dataclass(value) and not isinstance(value, type)
            spelled.update(dataclasses.asdict(value) if is_config else {name: value})
        return {k: _plain(v) for k, v in spelled.items()}
    config = getattr(model, "config", None)
    if hasattr(config, "to_diff_dict"):  # transformers' PretrainedConfig
        return _plain(
            {
                k: v
                for k, v in config.to_diff_dict().items()
                if k not in _HF_BOOKKEEPING and not k.startswith("_")
            }
        )
    return {}


def record_call(model: nn.Module, target, arguments: dict[str, Any]) -> None:
    """Record the arguments of a user's class or factory call on the model it returned, unless
    the model records its own."""
    if isinstance(getattr(model, SETTINGS, None), dict):
        return
    try:
        bound = inspect.signature(target).bind_partial(**arguments)
        bound.apply_defaults()
    except (TypeError, ValueError):  # a C-implemented or *args-only callable: what was passed
        object.__setattr__(model, SETTINGS, dict(arguments))
        return
    settings: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(target).parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            settings.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            settings[name] = value
    object.__setattr__(model, SETTINGS, settings)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["model_settings", "parameter_count", "record_call", "records_settings"]
