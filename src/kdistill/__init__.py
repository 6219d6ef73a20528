"""kdistill: knowledge distillation from a teacher to a checked, deployable student.

The public names are imported on first use (PEP 562), so that ``kdistill --version``, ``--help``
and every module that needs no model (errors, safe YAML, the recipe's text) start without
importing PyTorch, which alone takes a second or more.
"""

import warnings
from importlib import import_module

__version__ = "0.3.0"

# Each public name and the module that defines it, in three groups: the one call, the pieces a
# run is composed of, and models, data and weights.
ONE_CALL = {
    "distill": "kdistill.api",
    "fit": "kdistill.api",
    "DistillResult": "kdistill.api",
    "TrainConfig": "kdistill.training.settings",
    "MismatchError": "kdistill.teachers.pair",
    "evaluate": "kdistill.evaluation.classification",
}
COMPOSE = {
    "Distiller": "kdistill.distiller",
    "Teacher": "kdistill.distiller",
    "ModelOutput": "kdistill.distiller",
    "Term": "kdistill.methods",
    "FeatureTap": "kdistill.taps",
    "OnnxModel": "kdistill.teachers.onnx",
    "Recipe": "kdistill.run.config",
    "load_config": "kdistill.run.config",
}
MODELS_DATA_IO = {
    "create_model": "kdistill.models",
    "list_models": "kdistill.models",
    "ArrayDataset": "kdistill.data",
    "as_dataset": "kdistill.data.inputs",
    "as_loader": "kdistill.data.inputs",
    "load_weights": "kdistill.io.weights",
    "save_weights": "kdistill.io.weights",
}
_HOMES = {**ONE_CALL, **COMPOSE, **MODELS_DATA_IO}
# Names that moved out of the top level: still served, with a warning naming their home.
# PRESETS is the mutable registry of methods; a method is chosen by name (method="dkd").
_DEPRECATED = {"PRESETS": "kdistill.methods"}

__all__ = [*ONE_CALL, *COMPOSE, *MODELS_DATA_IO]


def __getattr__(name: str):
    if name in _DEPRECATED:
        home = _DEPRECATED[name]
        warnings.warn(
            f"kdistill.{name} is deprecated; import it from {home}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module(home), name)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted([*globals(), *_HOMES])
