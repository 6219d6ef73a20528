"""The documentation site (mkdocs.yml, docs/) is kept true by the tests: it builds in strict mode
(a broken link or reference fails), the generated recipe reference covers every field of the
schema, every method has its page in the navigation, and the commands the guides give name only
fields the recipe schema knows (issue 34)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

import pages  # noqa: E402 (docs/ is not a package)


def test_recipe_reference_covers_every_field_with_its_description():
    reference = pages.recipe_reference()
    fields = pages.recipe_fields()
    assert {"train.epochs", "data.unlabelled", "distill.temperature", "terms.loss"} <= set(fields)
    for name, field in fields.items():
        assert field.description, f"{name} has no description for the recipe reference"
        assert f"| `{name}` |" in reference, name


def test_every_method_has_a_page_in_the_navigation():
    from kdistill.methods import PRESETS

    nav = (ROOT / "mkdocs.yml").read_text()
    for name in PRESETS:
        assert f"methods/{name}.md" in nav, f"mkdocs.yml's nav lacks methods/{name}.md"
        page = pages.method_page(name, {"setup": {"teacher": "t", "student": "s", "seeds": 3}})
        assert "## When to use it" in page and "## Settings" in page, name
        assert name == "scratch" or ("## The losses" in page and "arXiv" in page), name
        assert name in pages.WHEN_TO_USE, f"docs/pages.py: say when to use {name}"


def test_each_verb_is_in_the_command_line_reference():
    import typer

    from kdistill.cli import app

    reference = pages.cli_page()
    for name in typer.main.get_command(app).commands:
        assert f"## kdistill {name}" in reference


def _commands(markdown: str) -> list[list[str]]:
    """Each `kdistill run|check ...` line of the page's bash blocks, as its arguments."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = [
        line.split(" #")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()
    ]
    return [shlex.split(line)[1:] for line in lines if re.match(r"\s*kdistill (run|check)\b", line)]


def test_the_guides_commands_name_only_fields_the_recipe_knows():
    """Every `kdistill run`/`check` command of the README and the docs resolves to a valid
    recipe (files it names are the user's own, so only the schema is checked here; the
    bring-your-own guide's commands run in full in test_readme_byo.py)."""
    from kdistill.run.config import load_config

    checked = 0
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for args in _commands(page.read_text()):
            args = shlex.split(re.sub(r"--seeds \d+|--\w+", "", shlex.join(args[1:])))
            recipe = args[0] if args and args[0].endswith((".yaml", ".yml")) else None
            overrides = args[1:] if recipe else args
            if recipe and not (ROOT / recipe).exists():
                continue  # a recipe the user writes (recipe.yaml in bring-your-own)
            load_config(str(ROOT / recipe) if recipe else None, overrides)
            checked += 1
    assert checked >= 10


@pytest.mark.integration
def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is part of dev: pip install -e '.[docs]'")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1", "PATH": ""},
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    method = (tmp_path / "methods" / "dkd" / "index.html").read_text()
    assert "Zhao et al." in method and "warmup_epochs" in method
    recipe = (tmp_path / "reference" / "recipe" / "index.html").read_text()
    assert "train.epochs" in recipe and "data.unlabelled" in recipe
    assert (tmp_path / "benchmarks" / "methods" / "index.html").exists()


def test_every_python_block_compiles_and_imports_names_that_exist():
    """Every snippet of every page is valid Python whose kdistill imports exist. They run too:
    the README's and the bring-your-own guide's in test_readme_byo.py, the others below, on
    stand-ins for the reader's own objects."""
    import ast

    blocks = 0
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for body in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            tree = ast.parse(body, filename=str(page))
            imports = [
                node
                for node in tree.body
                if isinstance(node, ast.Import | ast.ImportFrom)
                and "mymodels" not in ast.unparse(node)  # the reader's own file in the guide
            ]
            exec(compile(ast.Module(imports, []), str(page), "exec"), {})  # noqa: S102
            blocks += 1
    assert blocks >= 8


def _readers_objects(tmp_path) -> dict:
    """What a guide's snippet takes as the reader's own: a trained teacher and a student on six
    features, their data, a distiller and its loaders, and a process group of one (the scale
    guide's last line destroys it)."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader

    from kdistill import Distiller
    from kdistill.data.base import ArrayDataset
    from kdistill.methods import preset_terms

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    student = nn.Linear(6, 2)
    data = ArrayDataset(torch.from_numpy(x), torch.from_numpy(y))
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", store=dist.FileStore(str(tmp_path / "pg"), 1), rank=0, world_size=1
        )
    return {
        "teacher": teacher,
        "student": student,
        "x_train": x[:64],
        "y_train": y[:64],
        "x_val": x[64:],
        "y_val": y[64:],
        "distiller": Distiller(nn.Linear(6, 2), preset_terms("kd")),
        "loader": DataLoader(data, batch_size=32),
        "val": DataLoader(data, batch_size=32),
        "teacher_model": teacher,
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    "page", ["getting-started.md", "hinton.md", "guides/recipes.md", "guides/scale.md"]
)
def test_the_guides_python_runs_with_the_readers_objects(page, tmp_path, monkeypatch):
    """Each Python block of these pages runs, in order, on small stand-ins for the reader's own
    objects (the bring-your-own guide's and the README's run in test_readme_byo.py; the language
    model guide's in the slow suite)."""
    import torch.distributed as dist

    monkeypatch.chdir(tmp_path)
    namespace = _readers_objects(tmp_path)
    text = (
        (DOCS / page)
        .read_text()
        .replace("epochs=20", "epochs=1")
        .replace('"epochs": 10', '"epochs": 1')
    )
    try:
        for body in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            exec(compile(body, str(DOCS / page), "exec"), namespace)  # noqa: S102 (the docs run as written)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_the_language_model_guides_python_runs():
    """The cross-tokenizer snippet: SmolLM2 as the teacher through a shared vocabulary, a BPE
    student tokenizer trained on the plays; it builds everything, then one batch's loss."""
    body = re.search(
        r"```python\n(.*?)```", (DOCS / "guides" / "language-models.md").read_text(), re.S
    )
    namespace: dict = {}
    exec(compile(body.group(1), "language-models.md", "exec"), namespace)  # noqa: S102 (the docs run)
    from torch.utils.data import DataLoader

    from kdistill.data.base import collate

    batch = next(iter(DataLoader(namespace["splits"].train, batch_size=2, collate_fn=collate)))
    loss = namespace["distiller"](batch, namespace["teacher"](batch))["loss"]
    loss.backward()
    assert loss.isfinite()
