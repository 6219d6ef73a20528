"""The user's own model in a recipe: ``model: "package.module:ClassName"`` (a class or a factory
function) with ``kwargs``, as Hydra's ``_target_`` and torchdistill name theirs.

The module is imported from the recipe's directory, then the current directory, then the Python
path. ``num_classes`` and ``input_shape`` are passed only to a callable whose signature names
them; every other argument comes from the recipe's ``kwargs``, so the model is exactly what the
recipe says. Any ``nn.Module`` then works with every term: taps address its modules by name.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path

from torch import nn

from kdistill.models.settings import record_call

# Directories of the recipes read in this process, searched first (``load_config`` adds them):
# a recipe next to its model file works from any working directory.
RECIPE_DIRS: list[Path] = []
DATA_ARGUMENTS = ("num_classes", "input_shape")


class ImportedModelError(ValueError):
    """A ``module:Name`` that cannot be imported or does not build an ``nn.Module``."""


def is_import_spec(name: str) -> bool:
    return ":" in name


def remember_recipe_dir(directory: str | Path) -> None:
    directory = Path(directory).resolve()
    if directory not in RECIPE_DIRS:
        RECIPE_DIRS.insert(0, directory)


def _search_path() -> list[str]:
    return [str(d) for d in (*RECIPE_DIRS, Path.cwd().resolve())]


def import_target(spec: str):
    """The object ``spec`` (``package.module:Name``, ``Name`` may be dotted) names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or not all(part.isidentifier() for part in (*module_name.split("."), *attribute.split("."))):
        raise ImportedModelError(f"{spec!r}: write package.module:ClassName (or :factory_function)")
    added = [d for d in _search_path() if d not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ImportedModelError(
                f"{spec!r}: no module {error.name!r} in the recipe's directory, the current directory or the Python path"
            ) from None
        raise ImportedModelError(f"{spec!r}: importing {module_name} needs {error.name!r}, which is not installed") from None
    except Exception as error:  # noqa: BLE001 -- the user's module may raise anything at import
        raise ImportedModelError(f"{spec!r}: importing {module_name} failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}") from None
    finally:
        for directory in added:
            sys.path.remove(directory)
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ImportedModelError(f"{spec!r}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ImportedModelError(f"{spec!r}: {attribute} is a {type(target).__name__}, not a class or function")
    return target


def _accepted(target) -> set[str]:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return set()
    return {name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_imported(spec: str, **kwargs) -> nn.Module:
    """Call the class or factory ``spec`` names with the recipe's ``kwargs`` (and the data's
    ``num_classes`` / ``input_shape`` where its signature takes them)."""
    target = import_target(spec)
    accepted = _accepted(target)
    arguments = {k: v for k, v in kwargs.items() if k not in DATA_ARGUMENTS or k in accepted}
    model = target(**arguments)  # a TypeError names the keyword it does not take
    if not isinstance(model, nn.Module):
        raise ImportedModelError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    record_call(model, target, arguments)
    return model


def source_digest(spec: str) -> str:
    """SHA-256 of the file that defines ``spec``: a teacher trained from an edited class must not
    be reused from the store."""
    target = import_target(spec)
    try:
        file = inspect.getsourcefile(target)
    except TypeError:
        return ""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16] if file else ""


__all__ = ["RECIPE_DIRS", "ImportedModelError", "build_imported", "import_target", "is_import_spec", "remember_recipe_dir", "source_digest"]
