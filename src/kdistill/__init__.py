"""kdistill: knowledge distillation from a teacher to a checked, deployable student.

The public names are imported on first use (PEP 562), so that ``kdistill --version``, ``--help``
and every module that needs no model (errors, safe YAML, the recipe's text) start without
importing PyTorch, which alone takes a second or more.
"""

from importlib import import_module

__version__ = "0.2.0"

# Each public name and the module that defines it.
_HOMES = {
    "DistillResult": "kdistill.api",
    "distill": "kdistill.api",
    "fit": "kdistill.api",
    "ArrayDataset": "kdistill.data",
    "as_dataset": "kdistill.data.inputs",
    "as_loader": "kdistill.data.inputs",
    "Distiller": "kdistill.distiller",
    "ModelOutput": "kdistill.distiller",
    "Teacher": "kdistill.distiller",
    "PRESETS": "kdistill.methods",
    "Term": "kdistill.methods",
    "create_model": "kdistill.models",
    "list_models": "kdistill.models",
    "OnnxModel": "kdistill.teachers.onnx",
    "MismatchError": "kdistill.teachers.pair",
    "Recipe": "kdistill.run.config",
    "load_config": "kdistill.run.config",
    "FeatureTap": "kdistill.taps",
    "evaluate": "kdistill.evaluation.classification",
    "load_weights": "kdistill.io.weights",
    "save_weights": "kdistill.io.weights",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted([*globals(), *_HOMES])
