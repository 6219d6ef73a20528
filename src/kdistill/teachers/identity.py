"""What a teacher cache's fingerprint names of the teacher, beside the data it ran on: its
identity (parameters, buffers, each submodule's settings and its forward hooks, such as a
``vocab_map``) and the precision it runs in. Two teachers with the same identity give the same
outputs; a cache made by any other is refused (``kdistill.teachers.cache``).
"""

from __future__ import annotations

import hashlib
import json

from torch import Tensor, nn

from kdistill.io.tensors import tensor_digest

_PLAIN = (bool, int, float, str, type(None))


def _value_digest(value) -> str:
    if isinstance(value, Tensor):
        return tensor_digest({"": value})
    if isinstance(value, _PLAIN) or (
        isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
    ):
        return repr(value)
    return type(value).__qualname__  # an object (a FeatureTap, a model): its kind, not its id


def _hook_identity(hook) -> str:
    """A hook's function and the values it holds (closure cells, partial arguments)."""
    func = getattr(hook, "func", hook)  # functools.partial
    values = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            values.append(None)
    values += list(getattr(hook, "args", ())) + list(getattr(hook, "keywords", {}).values())
    name = (
        f"{getattr(func, '__module__', '?')}."
        f"{getattr(func, '__qualname__', type(func).__qualname__)}"
    )
    return hashlib.sha256("|".join([name, *map(_value_digest, values)]).encode()).hexdigest()[:16]


def precision_of(accelerator) -> dict:
    """The fingerprint's entry for the precision a cache's teacher runs in: a bf16 or fp16 run
    builds (and reads) its own cache, as its live teacher would run; float32 adds nothing, so
    caches made before the entry existed still match."""
    precision = getattr(accelerator, "mixed_precision", "no")
    return {} if precision in ("no", None) else {"precision": str(precision)}


def teacher_identity(module: nn.Module) -> dict:
    """Everything of ``module`` that changes its outputs: parameters and all buffers, each
    submodule's type and plain settings, and the forward hooks registered on it."""
    tensors = {
        **dict(module.named_parameters()),
        **{f"buffer:{k}": v for k, v in module.named_buffers()},
    }
    settings, hooks = [], []
    for name, sub in module.named_modules():
        plain = {
            k: v
            for k, v in sorted(vars(sub).items())
            if not k.startswith("_") and k != "training" and isinstance(v, _PLAIN)
        }
        settings.append([name, f"{type(sub).__module__}.{type(sub).__qualname__}", plain])
        for kind in ("_forward_pre_hooks", "_forward_hooks"):
            hooks += [
                [name, kind.strip("_"), _hook_identity(hook)]
                for hook in getattr(sub, kind).values()
            ]
    return {
        "weights": tensor_digest(tensors),
        "settings": hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:16],
        "hooks": hooks,
    }
