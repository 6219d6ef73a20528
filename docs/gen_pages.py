"""Pages generated from the code and the measurements when the site builds (mkdocs-gen-files),
so that they are regenerated, never edited: the recipe reference from the pydantic schema, the
command line from its help, one page per method from its preset and bench/results/methods.json,
and one page per benchmark from bench/results/*.md with its date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pages import (  # noqa: E402 (docs/ is not a package)
    RESULTS,
    ROOT,
    benchmark_page,
    benchmarks_index,
    cli_page,
    method_names,
    method_page,
    recipe_reference,
)


def committed_on(path: Path) -> str:
    """The date the measurement was committed (YYYY-MM-DD), or "not committed" for a new file."""
    try:
        date = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        date = ""
    return date or "not committed"


def write(name: str, text: str) -> None:
    with mkdocs_gen_files.open(name, "w") as page:
        page.write(text)


write("reference/recipe.md", recipe_reference())
write("reference/cli.md", cli_page())

measured = json.loads((RESULTS / "methods.json").read_text())
for name in method_names():
    write(f"methods/{name}.md", method_page(name, measured))

results = sorted(RESULTS.glob("*.md"))
for result in results:
    write(f"benchmarks/{result.name}", benchmark_page(result, committed_on(result)))
write("benchmarks/index.md", benchmarks_index(results))
for figure in sorted(RESULTS.glob("*.png")):  # the figures the benchmark pages and guides show
    with mkdocs_gen_files.open(f"benchmarks/{figure.name}", "wb") as copy:
        copy.write(figure.read_bytes())
