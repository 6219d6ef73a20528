"""The "Bring your own" guide (docs/guides/bring-your-own.md), run block by block (issue 14,
item 5): Python blocks are executed, a block whose first line is ``# file: NAME`` is written to
that file, and each ``kdistill`` line of a bash block is run by the CLI with one-epoch settings
added. The data the examples name (images/, reviews.csv, features.csv, a teacher/ directory) is
made first. The README's quickstarts are run the same way."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from test_bring_your_own_data import (
    hue_folder,
    tiny_text_teacher,
    write_features_csv,
    write_reviews,
)

from kdistill.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "bring-your-own.md"
FAST = [
    "train.epochs=1",
    "teacher.epochs=1",
    "data.subset=200",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def section_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_section_has_every_promised_example():
    blocks = section_blocks()
    code = "\n".join(body for _, body in blocks)
    for needle in (
        "kdistill.distill(",
        "# file: mymodels.py",
        "teacher.checkpoint=teacher.pt",
        "teacher.onnx=",
        "data.dataset=folder",
        "data.dataset=labelled_text",
        "data.dataset=table",
    ):
        assert needle in code, needle


def test_every_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    hue_folder(tmp_path / "images")
    write_reviews(tmp_path / "reviews.csv")
    write_features_csv(tmp_path / "features.csv")
    tiny_text_teacher(tmp_path / "teacher")
    commands = 0
    for language, body in section_blocks():
        first = body.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(body)
        elif language == "python":
            exec(compile(body, "bring-your-own.md", "exec"), {"__name__": "guide"})  # noqa: S102 -- our guide
        elif language == "bash":
            for line in filter(None, (line.strip() for line in body.splitlines())):
                argv = shlex.split(line)
                assert argv[0] == "kdistill", line
                commands += 1
                assert main([*argv[1:], *FAST, f"name=readme{commands}"]) == 0, line
    assert commands >= 6


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_quickstarts() -> list[tuple[str, str]]:
    """The code blocks of the README's "Quickstart" sections."""
    sections = README.read_text().split("\n## ")
    quickstarts = "\n".join(s for s in sections if s.startswith("Quickstart"))
    return re.findall(r"```(\w+)\n(.*?)```", quickstarts, flags=re.S)


def test_readme_is_short_and_its_quickstarts_run(tmp_path, monkeypatch):
    """README ≤ 250 lines (issue 34.1), and every command and code block of its three
    quickstarts runs as written, with one-epoch settings added to runs."""
    pytest.importorskip("onnxruntime")
    from PIL import Image
    from sklearn.datasets import load_digits

    assert len(README.read_text().splitlines()) <= 250
    monkeypatch.chdir(tmp_path)
    shutil.copytree(README.parent / "configs", tmp_path / "configs")
    hue_folder(tmp_path / "images")
    write_features_csv(tmp_path / "features.csv")
    pixels = (load_digits().images[0] * 255 / 16).astype("uint8")
    Image.fromarray(pixels, mode="L").save(tmp_path / "digit.png")
    verbs = []
    for language, body in readme_quickstarts():
        if language == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
            continue
        for line in filter(None, (line.split(" #")[0].strip() for line in body.splitlines())):
            argv = shlex.split(line)
            assert argv[0] == "kdistill", line
            fast = FAST if argv[1] in ("run", "check") else []
            assert main([*argv[1:], *fast]) == 0, line
            verbs.append(argv[1])
    assert {"run", "check", "list", "export", "predict"} <= set(verbs)
