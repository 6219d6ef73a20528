"""Every command the guides give runs (issue 34, item 3). Each `kdistill` line of a bash block in
docs/ is run by the CLI as written, with one-epoch settings added to runs (and two seeds or two
trials where the page asks for more), in page order, in a directory holding the repository's
configs and the files the pages name (a digit image, CSV rows). The commands that take minutes
or several processes are covered by the test ``ELSEWHERE`` names, which says how far (the
SmolLM2 recipes run at a small size in the slow suite: whole, they take 12-15 minutes each)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from test_readme_byo import FAST

from kdistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Commands another test runs (or, for the longest, checks), by a fragment of the line.
ELSEWHERE = {
    "torchrun": "tests/test_distributed.py and tests/test_fsdp.py: `kdistill run` under torchrun "
    "in 2 gloo processes, DDP and FSDP, on quick recipes (not 4 GPUs, not SmolLM2)",
    "configs/smollm2_": "tests/test_smollm2.py (-m slow): both SmolLM2 recipes checked, and run "
    "with 2,048 training tokens and one epoch; the full runs take 12-15 minutes each",
    "recipe.yaml": "tests/test_readme_byo.py (the bring-your-own guide, block by block)",
    "data.dataset=folder": "tests/test_readme_byo.py",
    "data.dataset=table": "tests/test_readme_byo.py",
    "data.dataset=labelled_text": "tests/test_readme_byo.py",
    "teacher.onnx=": "tests/test_readme_byo.py",
}
# What a page's command needs that a plain checkout lacks: the extra's data files.
NEEDS = {
    "configs/spoken_digits.yaml": "espeak-ng",
    "configs/japanese_vowels.yaml": "sktime",
    "configs/movielens.yaml": "recbole",
}
SHRINK = {"--seeds": "2", "--trials": "2", "-n": "2"}


def commands(page: Path) -> list[str]:
    """The `kdistill` lines of the page's bash blocks, comments cut, alternatives (a|b) split."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not re.match(r"(python -m )?kdistill |torchrun ", line) or "..." in line:
                continue
            alternatives = re.search(r"\b(\w+(?:\|\w+)+)\b", line)
            if alternatives:
                found += [line.replace(alternatives[1], a) for a in alternatives[1].split("|")]
            else:
                found.append(line)
    return found


def shrunk(argv: list[str]) -> list[str]:
    """Two seeds or trials instead of the page's count; one-epoch settings for a run or check."""
    argv = [SHRINK[argv[i - 1]] if i and argv[i - 1] in SHRINK else a for i, a in enumerate(argv)]
    if argv[0] in ("run", "check", "tune"):
        argv += FAST
    return argv


def elsewhere(line: str) -> str | None:
    return next((where for fragment, where in ELSEWHERE.items() if fragment in line), None)


PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name != "bring-your-own.md")
OWN = [p for p in PAGES if any(not elsewhere(line) for line in commands(p))]


def test_every_guide_command_is_run_here_or_by_a_named_test():
    """The inventory: the pages give commands, and each one is run (below or elsewhere)."""
    lines = [line for page in PAGES for line in commands(page)]
    assert len(lines) >= 20
    verbs = {shlex.split(line)[1] for line in lines if line.startswith("kdistill")}
    assert {"run", "check", "list", "export", "predict", "tune", "report"} <= verbs
    for fragment, where in ELSEWHERE.items():
        for test_file in re.findall(r"tests/\w+\.py", where):
            assert (ROOT / test_file).is_file(), f"ELSEWHERE names {test_file} for {fragment!r}"


@pytest.mark.integration
@pytest.mark.parametrize("page", OWN, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_pages_commands_run(page, tmp_path, monkeypatch):
    from PIL import Image
    from sklearn.datasets import load_digits

    lines = [line for line in commands(page) if not elsewhere(line)]
    for config, package in NEEDS.items():
        if any(config in line for line in lines) and not _available(package):
            pytest.skip(f"{page.name}: its recipes need {package} (the speech and recsys extra)")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    pixels = (load_digits().images[0] * 255 / 16).astype("uint8")
    Image.fromarray(pixels, mode="L").save(tmp_path / "digit.png")
    rows = load_digits().data[:2] / 16
    (tmp_path / "rows.csv").write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    for line in lines:
        argv = shrunk(shlex.split(line.removeprefix("python -m "))[1:])
        _runs_exist_for(argv)
        assert main(argv) == 0, line


def _runs_exist_for(argv: list[str]) -> None:
    """A page that exports, reports or predicts from a run it made earlier on another page (or
    in its text) finds that run: made here, with one-epoch settings."""
    named = [a for a in argv if a.startswith("runs/")]
    if argv[0] not in ("export", "report", "predict") or not named:
        return
    run = Path(named[0]).parts[1]
    if (Path("runs") / run / "summary.json").is_file():
        return
    recipe = {"mnist_kd": [], "digits_kd": ["configs/digits.yaml"]}[run]
    assert main(["run", *recipe, *FAST]) == 0
    if argv[0] == "predict":
        assert main(["export", f"runs/{run}"]) == 0


def _available(package: str) -> bool:
    if package == "espeak-ng":
        return shutil.which("espeak-ng") is not None
    import importlib.util

    return importlib.util.find_spec(package) is not None
