"""`kdistill export RUN_DIR`: ONNX files that match PyTorch (printed and stored), an int8 student
within its stated accuracy tolerance, latency and throughput of teacher and student in PyTorch
and ONNX Runtime in summary.json and the report, and one-line errors with exit 2."""

import json
import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip(
    "onnxruntime", reason="the export extra is not installed: pip install 'kdistill[export]'"
)

from kdistill.cli import main
from kdistill.deploy.onnx import export_onnx, max_abs_diff, ort_session
from kdistill.deploy.run_export import INT8_TOLERANCE, PARITY_TOLERANCE

TINY = [
    "data.subset=600",
    "teacher.epochs=1",
    "train.epochs=3",
    "train.batch_size=32",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


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


@pytest.mark.integration
def test_fp32_parity_is_printed_and_stored(exported):
    run_dir, output, summary = exported
    printed = re.search(
        r"student\.onnx .*max \|ONNX Runtime − PyTorch\| = ([0-9.e+-]+) .*passed", output
    )
    assert printed, output
    check = summary["export"]["checks"]["student fp32"]
    assert check["max_abs_diff"] <= PARITY_TOLERANCE == check["tolerance"] and check["passed"]
    assert float(printed.group(1)) == pytest.approx(check["max_abs_diff"], rel=0.01)
    assert check["value"] == pytest.approx(
        summary["student"]["accuracy"]
    )  # ONNX scores like PyTorch
    assert summary["export"]["checks"]["teacher fp32"]["max_abs_diff"] <= PARITY_TOLERANCE


@pytest.mark.integration
def test_int8_student_within_the_stated_tolerance(exported):
    run_dir, output, summary = exported
    check = summary["export"]["checks"]["student int8"]
    assert check["tolerance"] == INT8_TOLERANCE and check["metric"] == "accuracy"
    assert check["drop"] == pytest.approx(check["reference"] - check["value"])
    assert check["drop"] <= check["tolerance"] and check["passed"]
    assert check["top1_agreement_with_fp32"] > 0.9 and 0 < check["max_abs_diff"] < 1.0
    assert "student.int8.onnx" in output and "tolerance 1.00 points" in output
    assert check["drop_unit"] == "points" and check["kept_float32"] == []  # nothing to fall back
    assert check["selection"]["split"] == "validation"
    files = summary["export"]["files"]
    assert files["student_int8"]["bytes"] < 0.5 * files["student"]["bytes"]  # int8 weights


@pytest.mark.integration
def test_one_file_serves_batch_1_and_256(exported):
    run_dir, _, summary = exported
    session = ort_session(run_dir / summary["export"]["files"]["student"]["path"])
    for batch in (1, 256):
        out = session.run(None, {"input": torch.randn(batch, 1, 28, 28).numpy()})[0]
        assert out.shape == (batch, 10)


@pytest.mark.integration
def test_latency_throughput_and_sizes_in_summary_and_report(exported):
    run_dir, output, summary = exported
    export = summary["export"]
    for model in ("teacher", "student"):
        for runtime in ("pytorch", "onnxruntime"):
            latency = export["latency_ms"][model][runtime]
            assert latency["batch_1"] > 0 and latency["batch_256"] > 0
            assert export["throughput"][model][runtime] == pytest.approx(
                256_000 / latency["batch_256"]
            )
        assert (run_dir / export["files"][model]["path"]).stat().st_size == export["files"][model][
            "bytes"
        ]
    assert export["latency_ms"]["student_int8"]["onnxruntime"]["batch_256"] > 0
    for runtime in ("pytorch", "onnxruntime"):
        ratio = export["latency_ratio"][runtime]["batch_1"]  # None: a timing too unstable to use
        ms = export["latency_ms"]
        expected = ms["teacher"][runtime]["batch_1"] / ms["student"][runtime]["batch_1"]
        assert ratio is None or ratio == pytest.approx(expected)
        shown = "not measurable at this size" if ratio is None else f"{ratio:.1f}×"
        assert f"teacher/student latency in {runtime}: {shown} at batch 1" in output
    assert export["exporter"] in ("torchscript", "dynamo") and export["versions"]["onnxruntime"]
    for report in ("report.md", "report.html"):
        text = (run_dir / report).read_text()
        assert (
            "Deployment: ONNX" in text
            and "student.int8.onnx" in text
            and "Teacher / student latency" in text
        )


@pytest.mark.integration
def test_export_never_overwrites_silently(exported, capsys):
    run_dir, _, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "export").iterdir()}
    assert main(["export", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "export").iterdir()} == before


@pytest.mark.integration
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


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda tmp: tmp / "nowhere", "no such run directory"),
        (lambda tmp: tmp, "config.yaml is missing"),
    ],
)
def test_missing_run_dir_exits_2_with_one_line(make, fragment, tmp_path, capsys):
    assert main(["export", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.integration
def test_missing_extra_names_the_pip_command(exported, monkeypatch, capsys):
    run_dir, _, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    assert main(["export", str(run_dir), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "kdistill[export]"' in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_failed_parity_is_recorded_and_exits_2(exported, monkeypatch, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(exported[0], run_dir)
    monkeypatch.setattr("kdistill.deploy.run_export.max_abs_diff", lambda *args, **kwargs: 0.5)
    assert main(["export", str(run_dir), "--overwrite", "--no-int8", "--repeats", "1"]) == 2
    out, err = (stream.strip() for stream in capsys.readouterr())
    assert "student fp32 failed" in err and len(err.splitlines()) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["export"]["checks"]["student fp32"]["passed"] is False
    assert "student int8" not in summary["export"]["checks"]
    assert not (run_dir / "export" / "student.int8.onnx").exists()  # the earlier int8 file is gone
    report = (run_dir / "report.md").read_text()
    assert "FAILED" in report
    # the teacher's parity is recorded, and said not to decide the exit status
    assert summary["export"]["checks"]["teacher fp32"]["passed"] is False
    assert "(tolerance 0.0001): above it (recorded, not required)" in out
    assert "above (recorded only)" in report


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


# --- predict on each kind of export (issue 27.9, 27.15) ----------------------------------------

KIND_BUDGET = [
    "teacher.model=mlp",
    "teacher.epochs=1",
    "train.epochs=1",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


def rgb_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(2):
        (root / "rgb" / f"c{label}").mkdir(parents=True)
        for i in range(12):
            pixels = (rng.integers(0, 120, size=(8, 8, 3)) + 120 * label).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / "rgb" / f"c{label}" / f"{i}.png")
    inputs = [root / "rgb" / "c0" / "0.png", root / "rgb" / "c1" / "0.png"]
    return ["data.dataset=folder", f"data.path={root / 'rgb'}", "student.model=mlp_tiny"], inputs


def cultivars(root):
    """A table whose label column, ``cultivar``, the features must be given without."""
    rng = np.random.default_rng(0)
    rows = [[*(rng.normal(size=4) + i % 3), f"c{i % 3}"] for i in range(90)]
    pandas = pytest.importorskip("pandas", reason="Parquet files are written with pandas")
    frame = pandas.DataFrame(rows, columns=["f1", "f2", "f3", "f4", "cultivar"])
    frame.to_csv(root / "wine.csv", index=False)
    frame.drop(columns="cultivar").head(3).to_csv(root / "features.csv", index=False)
    options = [
        "data.dataset=table",
        f"data.path={root / 'wine.csv'}",
        "data.options.label=cultivar",
        "student.model=mlp_tiny",
    ]
    return options, [root / "features.csv"]


def sequences(root):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6, 4)).astype(np.float32), np.arange(60) % 2
    np.savez(root / "seq.npz", x=x + y[:, None, None], y=y)
    np.savetxt(root / "seq.csv", x[:3].reshape(3, -1), delimiter=",")
    options = ["data.dataset=npz", f"data.path={root / 'seq.npz'}", "student.model=gru_tiny"]
    return options, [root / "seq.csv"]


def reviews(root):
    from kdistill.io.resources import minilm_dir

    words = ["good great fine movie", "bad awful dull film"]
    lines = [f"{words[i % 2]} {i},{('pos', 'neg')[i % 2]}" for i in range(60)]
    (root / "reviews.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    (root / "lines.txt").write_text("\n".join(words) + "\n")
    options = [
        "data.dataset=labelled_text",
        f"data.path={root / 'reviews.csv'}",
        f"data.options.tokenizer={minilm_dir()}",
        "teacher.model=text_cnn",
        "student.model=text_cnn",
    ]
    return options, [root / "lines.txt"]


KINDS = {"rgb": rgb_folder, "table": cultivars, "sequence": sequences, "text": reviews}


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny run of one kind of input, exported: its export folder and the files to predict."""
    made = {}

    def make(kind):
        if kind not in made:
            root = tmp_path_factory.mktemp(kind)
            options, inputs = KINDS[kind](root)
            assert main(["run", *KIND_BUDGET, *options, f"output.dir={root}", "name=run"]) == 0
            assert main(["export", str(root / "run"), "--no-int8", "--repeats", "1"]) == 0
            made[kind] = root / "run" / "export", inputs
        return made[kind]

    return make


def grey_inputs(exported, root):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(root / "digit.png")
    np.savetxt(root / "digit.csv", pixels.reshape(1, -1) / 255, delimiter=",")
    return exported[0] / "export", [root / "digit.png", root / "digit.csv"]


def predicted(export_dir, inputs, capsys) -> list[list[str]]:
    capsys.readouterr()
    assert main(["predict", str(export_dir), *map(str, inputs)]) == 0, capsys.readouterr().err
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["grey", *KINDS])
def test_predict_runs_every_kind_of_export(kind, exported, tiny_export, tmp_path, capsys):
    import onnx

    export_dir, inputs = grey_inputs(exported, tmp_path) if kind == "grey" else tiny_export(kind)
    props = {p.key: p.value for p in onnx.load(str(export_dir / "student.onnx")).metadata_props}
    lines = predicted(export_dir, inputs, capsys)
    assert len(lines) == {"grey": 2, "rgb": 2, "table": 3, "sequence": 3, "text": 2}[kind]
    assert {line[1] for line in lines} <= set(json.loads(props["kdistill.classes"]))
    assert all(0 < float(line[2]) <= 1 for line in lines)
    if kind == "grey":  # the PNG and its CSV row are one sample
        assert lines[0][1:] == lines[1][1:]


@pytest.mark.integration
def test_predict_reads_a_16_bit_png_as_its_8_bit_equivalent(exported, tmp_path, capsys):
    """Issue 27.4 on the predict side: 16-bit pixels are scaled, not clipped to white."""
    from PIL import Image

    export_dir, (png, _) = grey_inputs(exported, tmp_path)
    pixels = np.asarray(Image.open(png), dtype=np.uint16) * 257  # 255 -> 65535
    Image.fromarray(pixels).save(tmp_path / "digit16.png")  # a uint16 array is mode I;16
    assert Image.open(tmp_path / "digit16.png").mode.startswith("I;16")
    eight, sixteen = predicted(export_dir, [png, tmp_path / "digit16.png"], capsys)
    assert eight[1] == sixteen[1] and float(eight[2]) == pytest.approx(float(sixteen[2]), abs=1e-4)


@pytest.mark.integration
def test_predict_names_the_label_column_to_drop(tiny_export, tmp_path, capsys):
    export_dir, _ = tiny_export("table")
    (tmp_path / "labelled.csv").write_text("f1,f2,f3,f4,cultivar\n0.1,0.2,0.3,0.4,c1\n")
    assert main(["predict", str(export_dir), str(tmp_path / "labelled.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop column 'cultivar'" in err and len(err.splitlines()) == 1


def tampered(export_dir, root, how):
    """A copy of an export whose student.onnx is damaged or carries edited metadata."""
    import shutil

    from kdistill.deploy.standalone import write_metadata

    copy = root / f"export_{how}"
    shutil.copytree(export_dir, copy)
    model = copy / "student.onnx"
    if how == "corrupt":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        return copy
    if how == "metadata_bytes":  # a graph ONNX Runtime loads, its class names no longer UTF-8
        data = model.read_bytes()
        at = data.index(b'"c0"') + 1
        model.write_bytes(data[:at] + b"\xdf" + data[at + 1 :])
        return copy
    edits = {
        "not_json": "{inputs: [",
        "no_inputs": json.dumps({"normalise": None}),
        "huge_image": json.dumps(
            {
                "inputs": [{"name": "input", "shape": [3, 60000, 60000]}],
                "image": {"mode": "RGB", "size": [60000, 60000]},
            }
        ),
    }
    write_metadata(model, {"kdistill.preprocessing": edits[how]})
    return copy


def hostile_input(root, how):
    from test_hardening import png_claiming

    files = {
        "bomb": ("bomb.png", png_claiming(100_000, 100_000)),
        "big": ("big.png", png_claiming(10_000, 10_000)),  # under Pillow's own limit, over ours
        "latin1": ("latin1.csv", "f1,f2\n1,2,3,\xe9\n".encode("latin-1")),
        "long_field": ("long.csv", b"1," + b"9" * 200_000 + b",3,4\n"),
    }
    name, data = files[how]
    (root / name).write_bytes(data)
    return root / name


@pytest.mark.integration
@pytest.mark.parametrize(
    "how, fragment",
    [
        ("bomb", "bomb.png"),
        ("big", "over the limit"),
        ("latin1", "not UTF-8"),
        ("long_field", "long.csv: line 1"),
        ("corrupt", "not a readable ONNX model"),
        ("metadata_bytes", "not a readable ONNX model"),
        ("not_json", "Invalid JSON"),
        ("no_inputs", "inputs"),
    ],
)
def test_predict_refuses_hostile_files_in_one_line(how, fragment, tiny_export, tmp_path, capsys):
    export_dir, inputs = tiny_export("rgb")
    if how in ("bomb", "big", "latin1", "long_field"):
        inputs = [hostile_input(tmp_path, how)]
    else:
        export_dir = tampered(export_dir, tmp_path, how)
    capsys.readouterr()
    assert main(["predict", str(export_dir), *map(str, inputs)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err


@pytest.mark.integration
def test_predict_on_a_huge_metadata_image_size_exits_2_under_a_memory_cap(tiny_export, tmp_path):
    """60000×60000 RGB in the metadata: 14 GB if believed, so only ever in a capped child."""
    from test_hardening import assert_user_error, kdistill_cli

    export_dir, inputs = tiny_export("rgb")
    huge = tampered(export_dir, tmp_path, "huge_image")
    result = kdistill_cli("predict", str(huge), str(inputs[0]), cwd=tmp_path)
    assert_user_error(result, "image.size")


@pytest.mark.integration
def test_an_export_stopped_half_way_is_replaced_by_the_next(exported, monkeypatch, tmp_path):
    """Each file is listed as kdistill's once written (io.files.replace_atomically): after an
    export that stopped after its ONNX files (here: int8 fails), `export --overwrite` replaces
    them instead of refusing them as a stranger's."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(exported[0], run_dir)
    shutil.rmtree(run_dir / "export")

    def broken(*args, **kwargs):
        raise RuntimeError("stopped")

    monkeypatch.setattr("kdistill.deploy.run_export.quantise_within", broken)
    assert main(["export", str(run_dir), "--repeats", "1"]) == 2
    assert (run_dir / "export" / "student.onnx").is_file()
    monkeypatch.undo()
    assert main(["export", str(run_dir), "--overwrite", "--repeats", "1"]) == 0


def test_the_output_batch_shrinks_for_large_outputs():
    """Batch 256 for a classifier; for a language model's logits (128 positions × 49,152 tokens,
    25 MB a sample) the largest power of two whose outputs fit 256 MiB: 8."""
    from kdistill.deploy.run_export import output_batch

    class Logits(torch.nn.Module):
        def __init__(self, *shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return torch.zeros(len(x), *self.shape)

    single = {"student": torch.zeros(1, 4), "teacher": torch.zeros(1, 4)}
    assert output_batch({"student": Logits(10), "teacher": Logits(10)}, single) == 256
    language = {"student": Logits(128, 49152), "teacher": Logits(10)}
    assert output_batch(language, single) == 8


def test_parity_in_chunks_is_parity_at_once(tmp_path):
    """max_abs_diff and top1_agreement read a batch some samples at a time (a language model's
    logits) and give what they give on the whole batch; keyword inputs split alike."""
    from kdistill.deploy.onnx import batch_rows, top1_agreement
    from kdistill.models import create_model

    model = create_model("mlp", num_classes=10, input_shape=(1, 28, 28)).eval()
    batch = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    export_onnx(model, batch[:4], tmp_path / "m.onnx", exporter="torchscript")
    session = ort_session(tmp_path / "m.onnx", threads=1)
    whole = max_abs_diff(model, session, batch)
    assert max_abs_diff(model, session, batch, rows=3) == pytest.approx(whole, abs=1e-7)
    assert top1_agreement(model, session, batch, rows=3) == top1_agreement(model, session, batch)
    assert top1_agreement(model, session, batch, rows=4) == 1.0
    ids = torch.arange(20).view(10, 2)
    parts = list(batch_rows({"input_ids": ids, "attention_mask": ids > 3}, 4))
    assert [len(part["input_ids"]) for part in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([part["attention_mask"] for part in parts]), ids > 3)
