"""The shape of the code: no import cycle, the layers' rules, files of one purpose, one registry
of teaching modes and of models."""

import ast
import warnings
from pathlib import Path

import pytest

from kdistill.models import INPUT_KINDS, MODELS, list_models
from kdistill.teaching import MODES

SRC = Path(__file__).resolve().parents[1] / "src" / "kdistill"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every kdistill module a file imports, at the top or inside a function (deferred imports
    count: a cycle hidden in a function is still a cycle)."""
    found = set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("kdistill"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("kdistill"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = {t for t in imports_of(path) if t in modules and t != name}
        # Importing a package's submodule runs the package's __init__ too, unless the importer
        # lives in that package (its __init__ is then already running or done).
        parents = {t.rpartition(".")[0] for t in targets}
        edges[name] = targets | {
            p for p in parents if p in modules and p != name and not name.startswith(p + ".")
        }
    return edges


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for target in edges[node]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


# DESIGN.md's layers, bottom up: a module imports only from its own layer or a lower one.
LAYERS = [
    ("errors", "modeling", "losses", "taps", "connectors", "models", "data", "io"),
    ("methods",),
    ("distiller",),
    ("training", "teachers"),
    ("teaching", "evaluation"),
    ("run", "deploy", "report"),
    ("api", "cli", "__main__"),
]
LAYER_OF = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# The loop scores its validation split with classification's ``evaluate`` unless told otherwise:
# the one import of a higher layer, and of a module that needs nothing of the loop.
ALLOWED_UP = {("kdistill.training.loop", "kdistill.evaluation.classification")}


def part_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_layers_point_one_way():
    edges = graph()
    for name, targets in edges.items():
        top = part_of(name)
        if top in ("teaching", "evaluation", "report"):
            assert not any(t.startswith("kdistill.run") for t in targets), f"{name} imports run/"
        if top in ("evaluation",):
            assert "kdistill.training.loop" not in targets, f"{name} depends on the training loop"
        if top not in LAYER_OF:
            continue
        above = sorted(
            t
            for t in targets
            if part_of(t) in LAYER_OF
            and LAYER_OF[part_of(t)] > LAYER_OF[top]
            and (name, t) not in ALLOWED_UP
            and t != "kdistill.evaluation"
        )
        assert not above, f"{name} (layer {LAYER_OF[top]}) imports {above} from above it"


def test_every_module_has_a_layer_and_the_top_level_is_at_most_ten_modules():
    top_level = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top_level) <= 10, top_level
    parts = {part_of(module_name(p)) for p in SRC.rglob("*.py")} - {""}
    assert parts <= set(LAYER_OF), parts - set(LAYER_OF)


def test_no_file_is_over_600_lines_and_files_over_400_are_named():
    """DESIGN.md: a file over ~400 lines is a question (a warning, so that a file is split by its
    purpose, not trimmed to fit a number), over 600 a defect."""
    lines = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    questions = {name: n for name, n in lines.items() if n > 400}
    if questions:
        warnings.warn(
            f"files over 400 lines, each a question of purpose: {questions}", stacklevel=1
        )
    defects = {name: n for name, n in lines.items() if n > 600}
    assert not defects, defects


def test_a_teaching_mode_is_one_module_behind_one_registry():
    assert set(MODES) == {"teacher", "ensemble", "assistant", "born_again", "mutual"}
    for name, teach in MODES.items():
        assert teach.__module__ == f"kdistill.teaching.{name}"
    # Nothing outside teaching/ branches on a mode's name.
    for path in SRC.rglob("*.py"):
        if "teaching" in path.parts or path.name == "plan.py":
            continue
        text = path.read_text()
        for mode in ("born_again", "mutual"):
            assert f'== "{mode}"' not in text and f"== '{mode}'" not in text, (
                f"{path} branches on {mode}"
            )


def test_one_model_registry_with_each_entrys_inputs():
    assert set(list_models()) == set(MODELS)
    assert {entry.inputs for entry in MODELS.values()} == set(INPUT_KINDS)
    assert all(entry.description for entry in MODELS.values())
    assert set().union(*(list_models(kind) for kind in INPUT_KINDS)) == set(MODELS)
