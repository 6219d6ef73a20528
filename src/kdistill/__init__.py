"""kdistill: knowledge distillation from a teacher to a checked, deployable student."""

from kdistill.api import DistillResult, MismatchError, distill, fit
from kdistill.data import ArrayDataset
from kdistill.data.inputs import as_dataset, as_loader
from kdistill.distiller import Distiller, ModelOutput, Teacher
from kdistill.methods import PRESETS, Term
from kdistill.models import create_model, list_models
from kdistill.onnx_teacher import OnnxModel
from kdistill.run.config import Recipe, load_config
from kdistill.taps import FeatureTap
from kdistill.trainer import evaluate
from kdistill.weights import load_weights, save_weights

__version__ = "0.2.0"

__all__ = [
    "PRESETS",
    "ArrayDataset",
    "DistillResult",
    "Distiller",
    "FeatureTap",
    "MismatchError",
    "ModelOutput",
    "OnnxModel",
    "Recipe",
    "Teacher",
    "Term",
    "as_dataset",
    "as_loader",
    "create_model",
    "distill",
    "evaluate",
    "fit",
    "list_models",
    "load_config",
    "load_weights",
    "save_weights",
]
