"""Read intermediate features of any ``nn.Module`` by module name, through forward hooks.

The model is not rewritten: a torchvision, timm or Hugging Face model works as it is. Names are
those of ``model.named_modules()`` on the *unwrapped* model (``layer3.1.conv2``); a wrapper added
by DDP or ``torch.compile`` is looked through, so the names a user reads in ``print(model)`` work.
Append ``:input`` to a name to record the module's input instead of its output, e.g. ``fc:input``
for the pooled features in front of a classifier.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdistill.errors import UserError
from kdistill.modeling import call_model, unwrap

INPUT_SUFFIX = ":input"


class TapError(UserError):
    """A tap names a module the model does not have."""


def _first_tensor(value) -> Tensor:
    """A hook may see a tensor, a tuple (RNNs, attention blocks) or a ModelOutput."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"cannot take a tensor from a {type(value).__name__} output")


def resolve_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """Map each tap name to its module, or fail naming the closest valid names."""
    modules = dict(unwrap(model).named_modules())
    resolved = {}
    for name in names:
        module_name = name.removesuffix(INPUT_SUFFIX)
        if module_name not in modules:
            close = difflib.get_close_matches(module_name, [m for m in modules if m], n=5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise TapError(
                f"tap {module_name!r}: no module of that name in {type(unwrap(model)).__name__}"
                f"{hint} (print(model) or `kdistill list taps` shows all)"
            )
        resolved[name] = modules[module_name]
    return resolved


class FeatureTap:
    """Records the outputs (or inputs) of named submodules on every forward pass.

    Use as a context manager, or keep it for a model's lifetime and call ``remove()``::

        with FeatureTap(model, ["layer2", "fc:input"]) as tap:
            logits = model(x)
            tap.features["layer2"]  # (N, C, H, W)
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for name, module in resolve_modules(model, self.names).items():
            self._handles.append(module.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        record_input = name.endswith(INPUT_SUFFIX)

        def hook(module: nn.Module, inputs: tuple, output) -> None:
            self.features[name] = _first_tensor(inputs if record_input else output)

        return hook

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, inputs, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the named features for one example batch; the model's mode is restored."""

    was_training = model.training
    model.eval()
    try:
        with FeatureTap(model, names) as tap:
            call_model(model, inputs)
            return {name: tuple(tap.features[name].shape) for name in tap.names}
    finally:
        model.train(was_training)
