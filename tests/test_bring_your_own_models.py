"""The user's own model class, weights and ONNX teacher in a recipe (issue 14, items 2 and 3)."""

import json
import textwrap
import warnings

import pytest
import torch
from torch import nn

from kdistill.cli import main
from kdistill.io.tensors import CheckpointError
from kdistill.io.weights import load_weights, save_weights
from kdistill.models import UnknownModelError, create_model

RUN = [
    "data.dataset=digits",
    "data.subset=400",
    "teacher.augment=none",
    "train.augment=none",
    "train.mix=none",
    "teacher.epochs=2",
    "train.epochs=2",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]

MODEL_FILE = '''
from torch import nn


class {cls}(nn.Module):
    """A plain user model: no forward_features, no hint_layers, nothing kdistill-specific."""

    def __init__(self, num_classes, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def small(width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
'''


def write_models(directory, module: str, cls: str = "Net") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(MODEL_FILE.format(cls=cls))


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_recipe_names_the_users_class_and_factory_next_to_the_recipe(tmp_path, capsys, monkeypatch):
    write_models(tmp_path / "project", "byo_models_a")
    recipe = tmp_path / "project" / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent("""
        teacher: {model: "byo_models_a:Net", kwargs: {hidden: 48}}
        student: {model: "byo_models_a:small", kwargs: {width: 8}}
        terms:
          - {name: ce, loss: ce, teacher: null}
          - {name: kd, loss: kd, params: {temperature: 4}}
          - {name: hint, loss: hint, student: "1", teacher: body.1, connector: linear, weight: 0.1}
    """)
    )
    monkeypatch.chdir(tmp_path)  # not the recipe's directory: found through the recipe's path
    assert main(["check", str(recipe), *RUN]) == 0
    assert (
        main(["run", str(recipe), *RUN, "train.epochs=10", f"output.dir={tmp_path / 'runs'}"]) == 0
    )
    summary = json.loads((tmp_path / "runs" / "digits_kd" / "summary.json").read_text())
    assert summary["teacher"]["model"] == "byo_models_a:Net"
    assert (
        summary["teacher"]["params"] == 64 * 48 + 48 + 48 * 10 + 10
    )  # hidden=48 reached the class
    assert summary["student"]["params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert (
        summary["student"]["accuracy"] > 0.2
    )  # above chance (0.1): it trained through every term, the hint tapped by name


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("teacher.model=byo_nowhere:Net", "no module 'byo_nowhere' in the recipe's directory"),
        ("teacher.model=byo_models_b:Missing", "byo_models_b has no 'Missing'"),
        ("teacher.kwargs={depth: 3}", "teacher.kwargs"),
        ("teacher.model='byo models:Net'", "write package.module:ClassName"),
    ],
)
def test_imported_model_errors_exit_2_at_preflight(
    tmp_path, capsys, monkeypatch, override, fragment
):
    write_models(tmp_path, "byo_models_b")
    monkeypatch.chdir(tmp_path)  # the current directory is searched too
    code, err = run(["check", *RUN, "teacher.model=byo_models_b:Net", override], capsys)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def test_state_dict_files_and_hf_directories_load_strictly(tmp_path):
    torch.manual_seed(0)
    model = Teacher()
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "lightning.ckpt")
    (tmp_path / "hf").mkdir()
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "hf" / "model.safetensors"))
    for source in ("teacher.pt", "lightning.ckpt", "hf"):
        fresh = load_weights(Teacher(), tmp_path / source)
        assert all(
            torch.equal(a, b)
            for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
        ), source

    torch.save(model, tmp_path / "pickled.pt")  # a whole pickled module: never unpickled
    with pytest.raises(CheckpointError, match=r"torch.save\(model.state_dict\(\), 'teacher.pt'\)"):
        load_weights(Teacher(), tmp_path / "pickled.pt")
    partial = {k: v for k, v in model.state_dict().items() if k != "fc.bias"} | {
        "extra.weight": torch.zeros(1)
    }
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing fc.bias; unexpected extra.weight"):
        load_weights(Teacher(), tmp_path / "partial.pt")
    torch.save({**model.state_dict(), "fc.bias": torch.zeros(3)}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"fc.bias \(3,\) in the file, \(10,\) in the model"):
        load_weights(Teacher(), tmp_path / "shape.pt")


def test_recipe_teacher_from_a_pt_file_is_used_not_trained(tmp_path, capsys, monkeypatch):
    write_models(tmp_path, "byo_models_c")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    teacher = create_model("byo_models_c:Net", num_classes=10, hidden=16)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    argv = [
        *RUN,
        "teacher.model=byo_models_c:Net",
        "teacher.kwargs={hidden: 16}",
        "teacher.checkpoint=teacher.pt",
        f"output.dir={tmp_path / 'runs'}",
    ]
    capsys.readouterr()
    assert main(["run", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "teacher: loaded from teacher.pt (not trained)" in out
    # RUN sets teacher.epochs and teacher.augment: said once, as settings that cannot apply.
    warnings = [line for line in out if line.startswith("warning:")]
    assert len(warnings) == 1 and "teacher.epochs, teacher.augment" in warnings[0], out
    summary = json.loads((tmp_path / "runs" / "digits_kd" / "summary.json").read_text())
    assert summary["teacher"]["source"] == "loaded from teacher.pt (not trained)"
    run_dir = tmp_path / "runs" / "digits_kd"
    assert "Teacher: loaded from teacher.pt (not trained)." in (run_dir / "report.md").read_text()
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    phases = {json.loads(line).get("phase") for line in records}
    assert "teacher" not in phases  # never trained
    assert summary["teacher"]["accuracy"] < 0.3  # untrained weights, loaded as they are
    torch.save(teacher, tmp_path / "pickled.pt")
    code, err = run(["check", *argv, "teacher.checkpoint=pickled.pt"], capsys)
    assert code == 2 and "state_dict" in err and len(err.splitlines()) == 1


def test_only_training_settings_the_user_gave_a_loaded_teacher_are_warned_about(tmp_path, capsys):
    """model_fields_set: a recipe that names only the checkpoint gets the announcement alone."""
    torch.manual_seed(0)
    weights = tmp_path / "t.safetensors"
    save_weights(create_model("mlp", num_classes=10, input_shape=(1, 8, 8), width=16), weights)
    recipe = tmp_path / "loaded.yaml"
    recipe.write_text(
        "data: {dataset: digits, subset: 200}\nstudent: {model: mlp_tiny}\n"
        f"teacher: {{model: mlp, kwargs: {{width: 16}}, checkpoint: {weights}}}\n"
    )
    given = ["teacher.epochs=3", "teacher.lr=0.1"]
    for extra, warned in (([], None), (given, "teacher.epochs, teacher.lr")):
        capsys.readouterr()
        assert main(["check", str(recipe), *extra]) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"teacher: loaded from {weights} (not trained)" in out
        warnings = [line for line in out if line.startswith("warning:")]
        expected = 0 if warned is None else 1
        assert len(warnings) == expected and all(warned in line for line in warnings), out


def export_teacher(tmp_path) -> nn.Module:
    torch.manual_seed(0)
    model = Teacher().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(tmp_path / "teacher.onnx"),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
        )
    return model


def test_recipe_onnx_teacher_teaches_and_fills_the_cache(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    export_teacher(tmp_path)
    argv = [*RUN, f"teacher.onnx={tmp_path / 'teacher.onnx'}", f"output.dir={tmp_path / 'runs'}"]
    assert main(["check", *argv]) == 0
    assert main(["run", *argv, "teacher.cache=true"]) == 0
    summary = json.loads((tmp_path / "runs" / "digits_kd" / "summary.json").read_text())
    assert summary["teacher"]["source"] == str(tmp_path / "teacher.onnx")
    assert (tmp_path / "runs" / "digits_kd" / "checkpoints" / "teacher.onnx").is_file()
    assert any((tmp_path / "runs" / ".cache").iterdir())
    code, err = run(["check", *argv, "method=fitnet"], capsys)
    assert code == 2 and "ONNX teacher gives only its output" in err and len(err.splitlines()) == 1
    code, err = run(["check", *argv, "distill.mode=mutual"], capsys)
    assert code == 2 and "teacher.onnx" in err


@pytest.mark.integration
def test_a_run_with_an_onnx_teacher_exports_from_anywhere(tmp_path, monkeypatch, capsys):
    """The export copies the teacher's graph (tracing its ONNX Runtime session would record
    constants) from the run's own copy, so a relative teacher.onnx works from another directory."""
    ort = pytest.importorskip("onnxruntime")
    teacher = export_teacher(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", *RUN, "teacher.onnx=teacher.onnx", "output.dir=runs", "name=ox"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["export", "../runs/ox"]) == 0
    summary = json.loads((tmp_path / "runs" / "ox" / "summary.json").read_text())
    assert summary["export"]["checks"]["teacher fp32"]["max_abs_diff"] == 0.0
    x = torch.randn(5, 1, 8, 8)
    session = ort.InferenceSession(
        str(tmp_path / "runs" / "ox" / "export" / "teacher.onnx"),
        providers=["CPUExecutionProvider"],
    )
    exported = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(
            torch.from_numpy(exported), teacher(x), atol=1e-5
        )  # the graph, not constants


def test_create_model_names_an_unimportable_spec():
    with pytest.raises(UnknownModelError, match="no module"):
        create_model("byo_not_a_module:Net")
