"""report.html: written by every run beside report.md, self-contained (plots embedded, no URL,
nothing to fetch), re-rendered by `kdistill report`, and really drawn by a browser: rendered in
headless Chromium when it is installed, and the screenshot must not be blank."""

import base64
import json
import re
import shutil
import subprocess

import pytest
from conftest import subprocess_env

from kdistill.cli import main

TINY = [
    "data.subset=300",
    "teacher.epochs=1",
    "train.epochs=1",
    "train.batch_size=32",
    "output.latency=false",
    "output.progress=false",
]
CHROMIUM = next(
    (
        shutil.which(name)
        for name in ("chromium", "chromium-browser", "google-chrome")
        if shutil.which(name)
    ),
    None,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", *TINY, f"output.dir={root}", "name=html"]) == 0
    return root / "html"


@pytest.mark.integration
def test_html_sits_beside_markdown_with_every_plot_embedded(run_dir):
    page = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()
    plots = re.findall(r"\]\(plots/([^)]+\.png)\)", markdown)
    assert {"loss_terms.png", "val_accuracy.png", "reliability.png", "confusion.png"} <= set(plots)
    embedded = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(plots)
    for data, name in zip(embedded, plots):
        assert base64.b64decode(data) == (run_dir / "plots" / name).read_bytes()
    # The same content as the markdown: the results table, the verdict, the diagnostics.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{100 * summary['student']['accuracy']:.2f}%" in page
    assert (
        "paired over" in page  # the verdict, whichever way it goes
        and "Diagnostics (test split" in page
        and "Per-class accuracy" in page
    )


@pytest.mark.integration
def test_html_needs_no_network(run_dir):
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert "default-src 'none'" in page  # the browser refuses any fetch, even one we missed


@pytest.mark.integration
def test_report_verb_rerenders_and_rejects_a_missing_run(run_dir, tmp_path, capsys):
    (run_dir / "report.html").unlink()
    (run_dir / "plots" / "confusion.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "plots" / "confusion.png").is_file()  # plots are redrawn too
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "summary.json" in err and len(err.splitlines()) == 1


@pytest.mark.integration
@pytest.mark.skipif(
    CHROMIUM is None,
    reason=(
        "Chromium is not installed (Debian: apt-get install chromium chromium-driver); the HTML "
        "report is checked without a browser only"
    ),
)
def test_chromium_renders_a_page_that_is_not_blank(run_dir, tmp_path):
    import matplotlib.image

    screenshot = tmp_path / "report.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,1600",
        (run_dir / "report.html").resolve().as_uri(),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=subprocess_env()
    )
    assert screenshot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    pixels = matplotlib.image.imread(str(screenshot))[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    # A blank page is one flat colour; the report has text, tables and plots.
    assert pixels.std() > 0.05
    not_white = (pixels < 0.9).any(axis=-1).mean()
    assert 0.02 < not_white < 0.9, not_white
