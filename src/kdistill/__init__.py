"""kdistill: knowledge distillation from a teacher to a checked, deployable student."""

from kdistill.api import DistillResult, distill
from kdistill.distiller import Distiller, ModelOutput, Teacher
from kdistill.methods import PRESETS, Term
from kdistill.models import create_model, list_models
from kdistill.run.config import Recipe, load_config
from kdistill.taps import FeatureTap
from kdistill.trainer import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DistillResult",
    "Distiller",
    "FeatureTap",
    "ModelOutput",
    "Recipe",
    "Teacher",
    "Term",
    "create_model",
    "distill",
    "evaluate",
    "fit",
    "list_models",
    "load_config",
]
