"""The user's own model in a recipe: ``model: "package.module:ClassName"`` (a class or a factory
function) with ``kwargs``, as Hydra's ``_target_`` and torchdistill name theirs.

The module is imported from the recipe's directory, then the current directory, then the Python
path. ``num_classes`` and ``input_shape`` are passed only to a callable whose signature names
them; every other argument comes from the recipe's ``kwargs``, so the model is exactly what the
recipe says. Any ``nn.Module`` then works with every term: taps address its modules by name.

A recipe, or a run directory someone shared, is data: what it names is checked before anything
is called. It may name an ``nn.Module`` subclass, a function defined in a file under the
recipe's directory or the current directory (the user's own code), or a function of the
installed package it names whose return annotation is an ``nn.Module`` (torchvision's
builders are). Never the standard library, a builtin, or any other callable (``os:system``,
``subprocess:run``, ``torch.utils.cpp_extension:load_inline``): they are refused before the
call, and a standard library module before it is even imported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import site
import sys
import sysconfig
from pathlib import Path

from torch import nn

from kdistill.models.settings import record_call

# Directories of the recipes read in this process, searched first (``load_config`` adds them):
# a recipe next to its model file works from any working directory.
RECIPE_DIRS: list[Path] = []
# Folders that are data, never code: a run directory whose config.yaml was read (export).
DATA_DIRS: list[Path] = []
DATA_ARGUMENTS = ("num_classes", "input_shape")


class ImportedModelError(ValueError):
    """A ``module:Name`` that cannot be imported or does not build an ``nn.Module``."""


def is_import_spec(name: str) -> bool:
    return ":" in name


def remember_recipe_dir(directory: str | Path) -> None:
    directory = Path(directory).resolve()
    if directory not in RECIPE_DIRS:
        RECIPE_DIRS.insert(0, directory)


def remember_data_dir(directory: str | Path) -> None:
    DATA_DIRS.append(Path(directory).resolve())


def _search_path() -> list[str]:
    return [str(d) for d in (*RECIPE_DIRS, Path.cwd().resolve())]


def import_target(spec: str):
    """The object ``spec`` (``package.module:Name``, ``Name`` may be dotted) names."""
    module_name, _, attribute = spec.partition(":")
    if (
        not module_name
        or not attribute
        or not all(part.isidentifier() for part in (*module_name.split("."), *attribute.split(".")))
    ):
        raise ImportedModelError(f"{spec!r}: write package.module:ClassName (or :factory_function)")
    if _standard(module_name):  # some run code when imported (antigravity, this)
        raise ImportedModelError(f"{spec!r}: {module_name} is Python's standard library; {YOURS}")
    added = [d for d in _search_path() if d not in sys.path]
    sys.path[:0] = added
    try:
        _not_from_data(spec, module_name)
        module = importlib.import_module(module_name)
    except ImportedModelError:
        raise
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ImportedModelError(
                f"{spec!r}: no module {error.name!r} in the recipe's directory, the current "
                "directory or the Python path"
            ) from None
        raise ImportedModelError(
            f"{spec!r}: importing {module_name} needs {error.name!r}, which is not installed"
        ) from None
    except Exception as error:  # noqa: BLE001 -- the user's module may raise anything at import
        raise ImportedModelError(
            f"{spec!r}: importing {module_name} failed: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}"
        ) from None
    finally:
        for directory in added:
            sys.path.remove(directory)
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ImportedModelError(f"{spec!r}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ImportedModelError(
            f"{spec!r}: {attribute} is a {type(target).__name__}, not a class or function"
        )
    vet(spec, target)
    return target


YOURS = "name your own torch.nn.Module subclass or a factory function from your own files"


def vet(spec: str, target) -> None:
    """Refuse, before it is ever called, a ``target`` that is neither an ``nn.Module`` subclass
    nor a function of the user's own code (see the module's docstring)."""
    if inspect.isclass(target):
        if not issubclass(target, nn.Module):
            raise ImportedModelError(
                f"{spec!r}: {target.__qualname__} is a class but not a torch.nn.Module; {YOURS}"
            )
        return
    if not inspect.isfunction(target):  # a builtin, a method, a partial, a callable object
        raise ImportedModelError(
            f"{spec!r}: a {type(target).__name__} is neither a class nor a plain function; {YOURS}"
        )
    defined_in = sys.modules.get(target.__module__)
    file = getattr(defined_in, "__file__", None)
    if file is None or _standard(target.__module__):
        raise ImportedModelError(
            f"{spec!r}: {target.__module__}.{target.__qualname__} is not your code; {YOURS}"
        )
    file = Path(file).resolve()
    installed = _under(file, _site_dirs())
    if not installed and _under(file, _standard_dirs()):
        raise ImportedModelError(f"{spec!r}: {target.__module__} is Python's own; {YOURS}")
    if _under(file, DATA_DIRS):  # however it was imported: a run directory is data
        raise ImportedModelError(
            f"{spec!r}: {file} lies in a run directory, which is data; {YOURS}"
        )
    if not installed and _under(file, [*RECIPE_DIRS, Path.cwd().resolve()]):
        return  # a factory in the user's own files
    same_package = target.__module__.partition(".")[0] == spec.partition(":")[0].partition(".")[0]
    if not (same_package and _returns_module(target)):
        raise ImportedModelError(
            f"{spec!r}: {target.__module__}.{target.__qualname__} is a function of an installed "
            f"package that does not declare it returns a torch.nn.Module (-> nn.Module); name "
            f"the model's class, or {YOURS}"
        )


def _not_from_data(spec: str, module_name: str) -> None:
    """Refuse, before importing it, a module that lies in a run directory, or below one: each
    dotted level is located before the next is looked up, since finding ``a.b`` imports ``a``
    (its ``__init__``), and a folder without one (``runs/``) is a namespace package whose
    modules have files of their own."""
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        found = importlib.util.find_spec(".".join(parts[:depth]))
        if found is None:
            return  # the import that follows names what is missing
        places = [found.origin] if found.origin else []
        places += list(found.submodule_search_locations or [])
        for place in map(Path, places):
            if _under(place.resolve(), DATA_DIRS):
                raise ImportedModelError(
                    f"{spec!r}: {place} lies in a run directory, which is data, not code; {YOURS}"
                )


def _standard(module_name: str) -> bool:
    return module_name.partition(".")[0] in (*sys.stdlib_module_names, "builtins")


def _site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    found = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [Path(p).resolve() for p in found]


def _standard_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    folders = [paths["stdlib"], paths["platstdlib"], sys.base_prefix]
    return [Path(folder).resolve() for folder in folders]


def _under(file: Path, folders: list[Path]) -> bool:
    return any(file.is_relative_to(folder) for folder in folders)


def _returns_module(function) -> bool:
    try:
        returned = inspect.signature(function, eval_str=True).return_annotation
    except Exception:  # noqa: BLE001 -- an annotation naming what is not importable here
        return False
    return inspect.isclass(returned) and issubclass(returned, nn.Module)


def _accepted(target) -> set[str]:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return set()
    return {
        name
        for name, p in parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_imported(spec: str, **kwargs) -> nn.Module:
    """Call the class or factory ``spec`` names with the recipe's ``kwargs`` (and the data's
    ``num_classes`` / ``input_shape`` where its signature takes them)."""
    target = import_target(spec)
    accepted = _accepted(target)
    arguments = {k: v for k, v in kwargs.items() if k not in DATA_ARGUMENTS or k in accepted}
    model = target(**arguments)  # a TypeError names the keyword it does not take
    if not isinstance(model, nn.Module):
        raise ImportedModelError(
            f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
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


__all__ = [
    "DATA_DIRS",
    "RECIPE_DIRS",
    "ImportedModelError",
    "build_imported",
    "import_target",
    "is_import_spec",
    "remember_data_dir",
    "remember_recipe_dir",
    "source_digest",
]
