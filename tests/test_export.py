"""`kdistill export RUN_DIR`: ONNX files that match PyTorch (printed and stored), an int8 student
within its stated accuracy tolerance, latency and throughput of teacher and student in PyTorch
and ONNX Runtime in summary.json and the report, and one-line errors with exit 2."""

import json
import re
import sys

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'kdistill[export]'")

from kdistill.cli import main
from kdistill.deploy.onnx import export_onnx, max_abs_diff, ort_session
from kdistill.deploy.run_export import INT8_TOLERANCE, PARITY_TOLERANCE

TINY = ["data.subset=600", "teacher.epochs=1", "train.epochs=3", "train.batch_size=32",
        "output.latency=false", "output.plots=false", "output.progress=false"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny run, exported once; the captured output and the summary it wrote."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", *TINY, f"output.dir={root}", "name=tiny"]) == 0
    run_dir = root / "tiny"
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr("typer.echo", lambda message="", **_: lines.append(str(message)))
    try:
        code = main(["export", str(run_dir), "--repeats", "3"])
    finally:
        capture.undo()
    assert code == 0, lines
    return run_dir, "\n".join(lines), json.loads((run_dir / "summary.json").read_text())


def test_fp32_parity_is_printed_and_stored(exported):
    run_dir, output, summary = exported
    printed = re.search(r"student\.onnx .*max \|ONNX Runtime − PyTorch\| = ([0-9.e+-]+) .*passed", output)
    assert printed, output
    check = summary["export"]["checks"]["student fp32"]
    assert check["max_abs_diff"] <= PARITY_TOLERANCE == check["tolerance"] and check["passed"]
    assert float(printed.group(1)) == pytest.approx(check["max_abs_diff"], rel=0.01)
    assert check["value"] == pytest.approx(summary["student"]["accuracy"])  # ONNX scores like PyTorch
    assert summary["export"]["checks"]["teacher fp32"]["max_abs_diff"] <= PARITY_TOLERANCE


def test_int8_student_within_the_stated_tolerance(exported):
    run_dir, output, summary = exported
    check = summary["export"]["checks"]["student int8"]
    assert check["tolerance"] == INT8_TOLERANCE and check["metric"] == "accuracy"
    assert check["drop"] == pytest.approx(check["reference"] - check["value"])
    assert check["drop"] <= check["tolerance"] and check["passed"]
    assert check["top1_agreement_with_fp32"] > 0.9 and 0 < check["max_abs_diff"] < 1.0
    assert "student.int8.onnx" in output and "tolerance 1 points" in output
    files = summary["export"]["files"]
    assert files["student_int8"]["bytes"] < 0.5 * files["student"]["bytes"]  # int8 weights


def test_one_file_serves_batch_1_and_256(exported):
    run_dir, _, summary = exported
    session = ort_session(run_dir / summary["export"]["files"]["student"]["path"])
    for batch in (1, 256):
        out = session.run(None, {"input": torch.randn(batch, 1, 28, 28).numpy()})[0]
        assert out.shape == (batch, 10)


def test_latency_throughput_and_sizes_in_summary_and_report(exported):
    run_dir, output, summary = exported
    export = summary["export"]
    for model in ("teacher", "student"):
        for runtime in ("pytorch", "onnxruntime"):
            latency = export["latency_ms"][model][runtime]
            assert latency["batch_1"] > 0 and latency["batch_256"] > 0
            assert export["throughput"][model][runtime] == pytest.approx(256_000 / latency["batch_256"])
        assert (run_dir / export["files"][model]["path"]).stat().st_size == export["files"][model]["bytes"]
    assert export["latency_ms"]["student_int8"]["onnxruntime"]["batch_256"] > 0
    for runtime in ("pytorch", "onnxruntime"):
        ratio = export["latency_ratio"][runtime]
        assert ratio["batch_1"] == pytest.approx(
            export["latency_ms"]["teacher"][runtime]["batch_1"] / export["latency_ms"]["student"][runtime]["batch_1"])
        assert f"teacher/student latency in {runtime}" in output
    assert export["exporter"] in ("torchscript", "dynamo") and export["versions"]["onnxruntime"]
    for report in ("report.md", "report.html"):
        text = (run_dir / report).read_text()
        assert "Deployment: ONNX" in text and "student.int8.onnx" in text and "Teacher / student latency" in text


def test_export_never_overwrites_silently(exported, capsys):
    run_dir, _, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "export").iterdir()}
    assert main(["export", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "export").iterdir()} == before


def test_export_overwrite_keeps_a_file_of_the_users(exported, tmp_path, capsys):
    """Issue 27.1: --overwrite replaces the files an earlier export wrote, never a file of the
    user's at one of their names (nor an edited one)."""
    import shutil

    run_dir = shutil.copytree(exported[0], tmp_path / "copy")
    card = run_dir / "export" / "README.md"
    card.write_text("my own deployment notes\n")
    before = {p.name: p.read_bytes() for p in (run_dir / "export").iterdir()}
    assert main(["export", str(run_dir), "--overwrite", "--no-int8", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "export/README.md" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (run_dir / "export").iterdir()} == before


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "nowhere", "no such run directory"),
    (lambda tmp: tmp, "config.yaml is missing"),
])
def test_missing_run_dir_exits_2_with_one_line(make, fragment, tmp_path, capsys):
    assert main(["export", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_extra_names_the_pip_command(exported, monkeypatch, capsys):
    run_dir, _, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    assert main(["export", str(run_dir), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "kdistill[export]"' in err and len(err.splitlines()) == 1


def test_failed_parity_is_recorded_and_exits_2(exported, monkeypatch, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(exported[0], run_dir)
    monkeypatch.setattr("kdistill.deploy.run_export.max_abs_diff", lambda *args: 0.5)
    assert main(["export", str(run_dir), "--overwrite", "--no-int8", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "student fp32 failed" in err and len(err.splitlines()) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["export"]["checks"]["student fp32"]["passed"] is False
    assert "student int8" not in summary["export"]["checks"]
    assert not (run_dir / "export" / "student.int8.onnx").exists()  # the earlier int8 file is gone
    assert "FAILED" in (run_dir / "report.md").read_text()


def test_dynamo_exporter_matches_pytorch_too(tmp_path):
    """The fallback exporter (torch.export-based, needs onnxscript) on a keyword-free model."""
    pytest.importorskip("onnxscript")
    from kdistill.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp_tiny", num_classes=10, input_shape=(1, 28, 28)).eval()
    path = tmp_path / "tiny.onnx"
    assert export_onnx(model, torch.randn(4, 1, 28, 28), path, exporter="dynamo") == "dynamo"
    session = ort_session(path)
    for batch in (1, 7):
        assert max_abs_diff(model, session, torch.randn(batch, 1, 28, 28)) <= PARITY_TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # one file, no temporary left
