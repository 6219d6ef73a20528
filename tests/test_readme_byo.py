"""The README's "Bring your own" section, run block by block (issue 14, item 5): Python blocks
are executed, a block whose first line is ``# file: NAME`` is written to that file, and each
``kdistill`` line of a bash block is run by the CLI with one-epoch settings added. The data the
examples name (images/, reviews.csv, features.csv, a teacher/ directory) is made first."""

import re
import shlex
from pathlib import Path

import pytest
from test_bring_your_own_data import (
    hue_folder,
    tiny_text_teacher,
    write_features_csv,
    write_reviews,
)

from kdistill.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = [
    "train.epochs=1",
    "teacher.epochs=1",
    "data.subset=200",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def section_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index("## Bring your own")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


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
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 -- our own README
        elif language == "bash":
            for line in filter(None, (line.strip() for line in body.splitlines())):
                argv = shlex.split(line)
                assert argv[0] == "kdistill", line
                commands += 1
                assert main([*argv[1:], *FAST, f"name=readme{commands}"]) == 0, line
    assert commands >= 6
