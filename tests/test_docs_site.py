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
    """A guide's snippets use the reader's own objects (teacher, loader ...), so they are not run
    here (README's quickstarts and the bring-your-own guide are, in test_readme_byo.py); but each
    must be valid Python and every name it imports from kdistill must exist."""
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
