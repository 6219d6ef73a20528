"""Hostile input at every boundary of a run (issue 13, items 5-10, 12, 13): nothing a user hands
us runs as code or expands without bound, every bad file or setting is one line and exit 2, and
nothing that was there before is changed.

The command-line cases whose input could expand (alias bombs, huge files) run the installed
console script in a child process with a memory cap, as a user would; the rest call the command
line in this process (the same exit status and one line, without a 2-3 s start each).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEMORY_CAP, TINY_RECIPE, call_cli, kdistill_cli
from torch import nn

import kdistill
from kdistill.data import load_dataset
from kdistill.errors import ConfigError, DataError
from kdistill.io import safe_yaml
from kdistill.io.tensors import (
    DIGEST_KEY,
    FORMAT_KEY,
    META_DIGEST_KEY,
    CheckpointError,
    load_tensors,
    read_meta,
    save_tensors,
)
from kdistill.methods import Term
from kdistill.models import create_model
from kdistill.report import MetricsLog


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one line on stderr that names what is wrong, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def refused_without_changes(
    tmp_path: Path, *args: str, fragments: tuple[str, ...] = (), memory: int | None = None
) -> str:
    """Refused in one line with nothing changed: in this process, or with ``memory`` set, by the
    console script in a child whose address space is capped at ``memory`` bytes."""
    before = snapshot(tmp_path)
    if memory:
        result = kdistill_cli(*args, cwd=tmp_path, memory=memory)
    else:
        result = call_cli(*args, cwd=tmp_path)
    line = assert_user_error(result, *fragments)
    after = snapshot(tmp_path)
    assert {
        k: v for k, v in after.items() if k in before
    } == before  # every file that was there is intact
    return line


# --- 6: YAML aliases -------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> list[str]:
    """The classic alias bomb, as lines of a YAML mapping: 9 anchors, each naming the one
    before nine times, 9**9 strings once expanded, from about 500 bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return lines


def test_measure_refuses_an_alias_bomb_before_expanding_it():
    text = "\n".join(billion_laughs())
    assert len(text) < 600
    with pytest.raises(ConfigError, match="expands to more than"):
        safe_yaml.load(text, "bomb.yaml")


def test_aliases_within_the_bound_and_merge_keys_still_work():
    tree = safe_yaml.load(
        "base: &base {width: 16}\nstudent: {<<: *base, depth: 2}\nsame: *base\n", "ok.yaml"
    )
    assert tree == {
        "base": {"width": 16},
        "student": {"width": 16, "depth": 2},
        "same": {"width": 16},
    }
    assert "*" not in safe_yaml.dump(tree) and "&" not in safe_yaml.dump(
        tree
    )  # config.yaml spells values out


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a: &a [*a]", "refers to itself"),
        ("[" * 200 + "]" * 200, "nested"),
        ("x: '" + "y" * (safe_yaml.MAX_TEXT + 1) + "'", "at most"),
    ],
)
def test_recursive_deep_and_huge_yaml_refused(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        safe_yaml.load(text, "recipe.yaml")


@pytest.mark.integration
@pytest.mark.parametrize("section", ["distill.params", "data.options", "student.kwargs"])
def test_cli_refuses_a_recipe_alias_bomb_in_a_free_form_field(tmp_path, section):
    outer, inner = section.split(".")
    bomb = "\n".join(f"    {line}" for line in billion_laughs())
    (tmp_path / "bomb.yaml").write_text(f"{outer}:\n  {inner}:\n{bomb}\n")
    refused_without_changes(
        tmp_path, "run", "bomb.yaml", fragments=("bomb.yaml", "aliases"), memory=MEMORY_CAP
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_cli_refuses_an_alias_bomb_given_as_an_override(tmp_path):
    flow = "{" + ", ".join(billion_laughs()) + "}"
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        f"distill.params={flow}",
        fragments=("distill.params", "aliases"),
        memory=MEMORY_CAP,
    )


# --- 5: no remote code -----------------------------------------------------------------------


def test_hf_refuses_trust_remote_code_in_kwargs_and_config():
    bert = {
        "model_type": "bert",
        "vocab_size": 30,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    with pytest.raises(ConfigError, match="trust_remote_code is refused"):
        create_model("hf", num_classes=2, config=bert, trust_remote_code=True)
    with pytest.raises(ConfigError, match="auto_map is refused"):
        create_model("hf", num_classes=2, config={**bert, "auto_map": {"AutoConfig": "x.Y"}})
    with pytest.raises(ConfigError, match="not a setting of the bert config"):
        create_model(
            "hf", num_classes=2, config=bert, device_map="auto"
        )  # a loader option, not a setting
    shallow = create_model("hf", num_classes=2, config=bert, num_attention_heads=4, hidden_size=16)
    assert shallow.config.num_attention_heads == 4  # named settings still pass


def test_hf_directory_code_never_runs(tmp_path):
    model_dir, ran = tmp_path / "evil", tmp_path / "ran"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(
            {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
        )
    )
    (model_dir / "configuration_evil.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    for pretrained in (True, False):
        with pytest.raises(ConfigError):
            create_model("hf", num_classes=2, path=str(model_dir), pretrained=pretrained)
    assert not ran.exists()


@pytest.mark.integration
def test_cli_refuses_trust_remote_code_in_one_line(tmp_path):
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        "teacher.model=hf",
        "teacher.kwargs.trust_remote_code=true",
        fragments=("trust_remote_code",),
    )


# --- 7, 8, 12: data files ----------------------------------------------------------------------


def save_npz(path: Path, x, y) -> Path:
    np.savez(path, x=x, y=y)
    return path


def features(n: int = 60) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def test_npz_labels_must_be_dense_or_named(tmp_path):
    y = np.arange(60) % 3
    with pytest.raises(DataError, match="dense class indices"):
        load_dataset("npz", path=str(save_npz(tmp_path / "gap.npz", features(), y * 2)))  # 0, 2, 4
    splits = load_dataset("npz", path=str(tmp_path / "gap.npz"), num_classes=5)  # named: fine
    assert splits.num_classes == 5
    with pytest.raises(DataError, match=r"0\.\.9999, found 0\.\.2000000000"):
        load_dataset(
            "npz",
            path=str(save_npz(tmp_path / "huge.npz", features(), np.r_[y[:-1], 2_000_000_000])),
        )
    with pytest.raises(DataError, match="num_classes"):
        load_dataset("npz", path=str(tmp_path / "gap.npz"), num_classes=10**9)
    dense = load_dataset("npz", path=str(save_npz(tmp_path / "dense.npz", features(), y)))
    assert dense.num_classes == 3


def forge_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite a member's uncompressed size in the
    zip's central directory (what a bomb lies about)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_length] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` whose header claims ``shape`` float32 but which holds 16 bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + bytes(16)


def test_npz_sizes_are_checked_before_decompressing(tmp_path):
    bomb = save_npz(tmp_path / "bomb.npz", features(), np.arange(60) % 3)
    forge_declared_size(bomb, "x.npy", 3 * 2**30)
    with pytest.raises(
        DataError, match=r"decompress to 3,221,22\d,\d+ bytes, more than the limit of 2,147,483,648"
    ):
        load_dataset("npz", path=str(bomb))
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("x.npy", npy_claiming((10**12,)))
        buffer = io.BytesIO()
        np.save(buffer, np.arange(4))
        archive.writestr("y.npy", buffer.getvalue())
    with pytest.raises(DataError, match="declares shape"):
        load_dataset("npz", path=str(liar))


@pytest.mark.integration
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: save_npz(p, features(2), np.arange(2)), "split empty"),  # 1 sample of 2 classes
        (
            lambda p: save_npz(p, np.array([["a"] * 4] * 60), np.arange(60) % 2),
            "inputs must be numbers",
        ),
        (lambda p: save_npz(p, features(), (np.arange(60) % 2)[:, None]), "shape (N,)"),
        (lambda p: save_npz(p, features()[:, 0], np.arange(60) % 2), "reshape(-1, 1)"),
        (
            lambda p: p.write_bytes(b"PK" + np.random.default_rng(0).bytes(400)) and p,
            "not a readable .npz",
        ),
        (lambda p: save_npz(p, features(), np.arange(60) % 2 * 100_000), "0..9999"),
    ],
)
def test_cli_refuses_bad_npz_files_in_one_line(tmp_path, make, fragment):
    make(tmp_path / "data.npz")
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        "data.dataset=npz",
        "data.path=data.npz",
        fragments=("data.npz", fragment),
    )


def png_claiming(width: int, height: int, pixels: bytes = zlib.compress(b"")) -> bytes:
    """A grey PNG of width × height, its compressed ``pixels`` (by default none: a header only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def image_folder(root: Path) -> Path:
    from PIL import Image

    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (6, 6), color=i * 20).save(root / name / f"{i}.png")
    return root


def test_image_bombs_and_broken_images_name_the_file(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "cat" / "huge.png").write_bytes(png_claiming(20_000, 20_000))
    with pytest.raises(DataError, match=r"huge\.png: more pixels than PIL's limit"):
        load_dataset("folder", path=str(root))
    (root / "cat" / "huge.png").write_bytes(png_claiming(6, 6)[:30])  # a truncated header
    with pytest.raises(DataError, match=r"huge\.png: not a readable image"):
        load_dataset("folder", path=str(root))


@pytest.mark.integration
@pytest.mark.parametrize(
    "option, fragment",
    [
        ("data.options.channels=2", "data.options.channels: 1 (grayscale) or 3 (RGB), got 2"),
        ("data.options.image_size=0", "data.options.image_size"),
    ],
)
def test_cli_refuses_image_folder_options(tmp_path, option, fragment):
    image_folder(tmp_path / "images")
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        "data.dataset=folder",
        "data.path=images",
        option,
        fragments=(fragment,),
    )


@pytest.mark.integration
def test_cli_refuses_val_fraction_0_before_the_teacher_trains(tmp_path):
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        "data.val_fraction=0",
        fragments=("data.val_fraction=0 leaves no validation samples",),
    )
    metrics = tmp_path / "runs" / "digits_kd" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text()  # no teacher epoch was logged


@pytest.mark.integration
def test_cli_names_a_negative_model_size(tmp_path):
    refused_without_changes(
        tmp_path,
        "run",
        *TINY_RECIPE,
        "student.kwargs.width=-5",
        fragments=("student.kwargs: mlp: width=-5 is negative",),
    )


# --- 9: checksums over metadata ----------------------------------------------------------------


def rewrite_metadata(path: Path, edit) -> None:
    """Change a safetensors file's header metadata as an editor would, keeping its tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(path)), str(path), metadata=edit(metadata))


def training_state(path: Path) -> Path:
    meta = {
        "format": "kdistill-training-state/1",
        "progress": {"epoch": 23},
        "scheduler": {"lr": 0.001},
    }
    save_tensors(path, {"model.weight": torch.ones(3)}, meta)
    return path


def test_edited_metadata_is_refused(tmp_path):
    state = training_state(tmp_path / "student.state.safetensors")
    assert read_meta(state)["progress"]["epoch"] == 23
    rewrite_metadata(state, lambda m: {**m, FORMAT_KEY: m[FORMAT_KEY].replace("23", "148")})
    for read in (read_meta, load_tensors):
        with pytest.raises(CheckpointError, match="metadata is corrupted or edited"):
            read(state)
    rewrite_metadata(state, lambda m: {k: v for k, v in m.items() if k != META_DIGEST_KEY})
    with pytest.raises(CheckpointError, match="without its checksum"):
        load_tensors(state)


def test_a_file_without_a_checksum_is_reported_or_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    zeroed = tmp_path / "teacher.safetensors"
    save_file({"weight": torch.zeros(3)}, str(zeroed))  # another tool's file: no kdistill digest
    tensors, _ = load_tensors(zeroed, what="weights file")
    assert torch.equal(tensors["weight"], torch.zeros(3))
    note = capsys.readouterr().err
    assert "teacher.safetensors: weights file carries no kdistill checksum" in note
    with pytest.raises(CheckpointError, match="carries no checksum"):
        load_tensors(zeroed, what="weights file", expect_digest=True)


def test_every_file_kdistill_writes_carries_both_digests(tmp_path):
    from safetensors import safe_open

    state = training_state(tmp_path / "state.safetensors")
    weights = tmp_path / "weights.safetensors"
    save_tensors(weights, {"w": torch.ones(2)})
    for path in (state, weights):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        assert DIGEST_KEY in metadata
        assert (META_DIGEST_KEY in metadata) == (FORMAT_KEY in metadata)


# --- 10: a torn metrics log ----------------------------------------------------------------------


def test_torn_last_record_is_dropped_with_a_note_and_the_next_write_starts_clean(tmp_path, capsys):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"phase": "teacher", "epoch": 1})
    with log.path.open("a") as f:
        f.write('{"phase": "teacher", "ep')  # a crash mid-append
    assert log.read() == [{"phase": "teacher", "epoch": 1}]
    assert "dropped its incomplete last line" in capsys.readouterr().err
    log.write({"phase": "teacher", "epoch": 2})
    assert log.read() == [{"phase": "teacher", "epoch": 1}, {"phase": "teacher", "epoch": 2}]
    assert capsys.readouterr().err == ""


def test_damage_before_the_last_record_is_a_user_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"phase": "teacher", "epoch": 1}\nnot json\n{"phase": "teacher", "epoch": 2}\n'
    )
    with pytest.raises(kdistill.errors.UserError, match="line 2 is not a JSON record"):
        MetricsLog(path).read()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    result = call_cli("run", *TINY_RECIPE, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "runs" / "digits_kd"


@pytest.mark.integration
def test_cli_report_survives_a_torn_metrics_log(finished_run, tmp_path):
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"phase": "student", "epo')
    (run_dir / "plots").mkdir()  # the report reads the log to redraw the training curves
    result = call_cli("report", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "incomplete last line" in result.stderr


@pytest.mark.integration
def test_cli_resume_refuses_an_edited_training_state(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "runs" / "digits_kd")
    checkpoints = tmp_path / "runs" / "digits_kd" / "checkpoints"
    (checkpoints / "student.safetensors").unlink()  # the student phase was interrupted ...
    (tmp_path / "runs" / "digits_kd" / "summary.json").unlink()
    state = training_state(checkpoints / "student.state.safetensors")  # ... at epoch 23
    rewrite_metadata(state, lambda m: {**m, FORMAT_KEY: m[FORMAT_KEY].replace("23", "148")})
    refused_without_changes(
        tmp_path, "run", *TINY_RECIPE, "--resume", fragments=("student.state.safetensors", "edited")
    )


# --- issue 27, items 2 and 3: nothing named in a recipe or a run directory runs unvetted ----------

SHELL = "touch pwned"  # what a hostile recipe or summary.json asks the shell to do
HOSTILE = [
    ("os:system", {"command": SHELL}),
    ("subprocess:check_call", {"args": SHELL, "shell": True}),
    ("builtins:exec", {"source": "open('pwned', 'w')"}),
    ("mymodels:build", {"cmd": SHELL}),  # the standard library's, re-exported by the user's file
    ("evil_model:boom", {}),  # a module in a run directory, which is data
    ("sub.evil_model:boom", {}),  # ... or below it, through a folder without __init__.py
    ("run.sub.evil_model:boom", {}),  # ... reached from the current directory
    ("torch.utils.cpp_extension:load_inline", {"cpp_sources": ""}),  # installed, not a factory
    ("numpy:load", {"file": "x.npy", "allow_pickle": True}),
]
EVIL_MODULE = "open('pwned', 'w')\n\n\ndef boom():\n    open('pwned', 'w')\n"


def test_hostile_model_names_are_refused_before_anything_is_called(tmp_path, monkeypatch, request):
    from kdistill.models import UnknownModelError, imported

    monkeypatch.chdir(tmp_path)
    written = (
        "mymodels",
        "evil_model",
        "sub",
        "sub.evil_model",
        "run",
        "run.sub",
        "run.sub.evil_model",
    )
    for name in written:
        request.addfinalizer(lambda name=name: sys.modules.pop(name, None))
    (tmp_path / "mymodels.py").write_text(
        "from subprocess import getoutput as build\n\n\n"
        "def tiny(width=3):\n    return __import__('torch').nn.Linear(2, width)\n"
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "evil_model.py").write_text(EVIL_MODULE)
    (tmp_path / "run" / "sub").mkdir()
    (tmp_path / "run" / "sub" / "evil_model.py").write_text(EVIL_MODULE)
    monkeypatch.setattr(imported, "DATA_DIRS", [(tmp_path / "run").resolve()])
    monkeypatch.syspath_prepend(str(tmp_path / "run"))  # even where Python itself would find it
    for spec, kwargs in HOSTILE:
        with pytest.raises(UnknownModelError, match="your own"):
            create_model(spec, **kwargs)
        assert not (tmp_path / "pwned").exists(), spec
    assert create_model("mymodels:tiny", width=4).out_features == 4  # the user's own factory works


@pytest.mark.integration
@pytest.mark.parametrize(
    "model, role, in_run_dir",
    [
        ("os:system", "student", False),
        ("evil_model:boom", "teacher", True),
    ],
)
def test_cli_export_never_calls_what_a_tampered_summary_names(
    finished_run, tmp_path, model, role, in_run_dir
):
    pytest.importorskip("onnxruntime", reason="export needs kdistill[export]")
    run_dir = shutil.copytree(finished_run, tmp_path / "runs" / "shared")
    (run_dir / "evil_model.py").write_text(EVIL_MODULE)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["roles"][role]["architecture"] = {"model": model, "kwargs": dict(HOSTILE)[model]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    cwd = run_dir if in_run_dir else tmp_path  # a run directory is data, even as the current one
    refused_without_changes(
        cwd, "export", str(run_dir.resolve()), "--no-int8", fragments=(f"roles.{role}.model", model)
    )
    assert not (cwd / "pwned").exists()


@pytest.mark.integration
@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_recipe_never_calls_a_standard_library_function(tmp_path, command):
    recipe = f"teacher: {{model: 'os:system', kwargs: {{command: '{SHELL}'}}}}\n"
    (tmp_path / "recipe.yaml").write_text(recipe)
    refused_without_changes(
        tmp_path,
        command,
        "recipe.yaml",
        "data.dataset=digits",
        "train.epochs=1",
        "teacher.epochs=1",
        fragments=("teacher.model", "os:system"),
    )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "runs").exists()


# --- 13: the Python API --------------------------------------------------------------------------


def tiny(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, outputs))


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(40, 4, generator=generator), torch.randint(0, 5, (40,), generator=generator)


@pytest.mark.parametrize(
    "student_outputs, settings, fragment",
    [
        (3, {}, "the teacher has 5 outputs but the student has 3"),
        (5, {"temperature": -1.0}, "temperature must be a positive number"),
        (5, {"temperature": float("nan")}, "temperature must be a positive number"),
        (5, {"alpha": 2.0}, "0 <= alpha <= 1"),
    ],
)
def test_distill_refuses_what_cannot_train(student_outputs, settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        kdistill.distill(
            tiny(5),
            tiny(student_outputs),
            tiny_data(),
            epochs=1,
            progress=False,
            device="cpu",
            **settings,
        )


def test_distill_leaves_no_hooks_on_the_users_models():
    teacher, student = tiny(5), tiny(5)
    terms = [
        Term("ce", "ce", teacher=None),
        Term("hint", "hint", student="2", teacher="2", connector="linear"),
    ]
    kdistill.distill(
        teacher, student, tiny_data(), terms=terms, epochs=1, progress=False, device="cpu"
    )
    for model in (teacher, student):
        assert all(not module._forward_hooks for module in model.modules())


# --- the built-in recipe pointed at other data -----------------------------------------------


@pytest.mark.integration
def test_image_settings_a_user_gives_a_table_are_one_line_naming_them_all(tmp_path):
    """The built-in's image views no longer reach a table (they follow the data, issue 30.1);
    the same views asked for by name are still refused, all of them in one line."""
    rows = ["length,width,species", *(f"{i % 7}.5,{i % 3}.25,{'ab'[i % 2]}" for i in range(60))]
    (tmp_path / "features.csv").write_text("\n".join(rows) + "\n")
    line = refused_without_changes(
        tmp_path,
        "run",
        "data.dataset=table",
        "data.path=features.csv",
        "data.options.label=species",
        "teacher.model=mlp",
        "student.model=mlp_tiny",
        "teacher.augment=affine",
        "train.augment=affine",
        "train.mix=cutmix",
        fragments=(
            "teacher.augment=affine, train.augment=affine and train.mix=cutmix transform images",
            "the inputs are (2,)",
            "set teacher.augment=none train.augment=none train.mix=none",
        ),
    )
    assert not (tmp_path / "runs").exists(), line  # refused by the check, before any run directory


@pytest.mark.parametrize(
    ("inputs", "settings", "wrong", "kind"),
    [
        (
            torch.randn(8, 29, 12),
            ["teacher.augment=none", "train.augment=affine", "train.mix=cutmix"],
            "train.augment=affine and train.mix=cutmix",
            "sequences",
        ),
        (
            torch.randn(8, 29, 12),
            ["train.augment=shift", "train.mix=mixup", "teacher.augment=shift"],
            None,
            "",
        ),
        (
            torch.randint(0, 9, (8, 16)),
            ["train.augment=none", "train.mix=mixup", "teacher.augment=none"],
            "train.mix=mixup",
            "token ids",
        ),
        (torch.randn(8, 1, 8, 8), [], None, ""),  # images take the built-in recipe's settings
        (
            torch.randn(8, 5),
            ["teacher.checkpoint=t.safetensors", "train.augment=none", "train.mix=none"],
            None,
            "",
        ),
    ],
)
def test_transforms_the_inputs_cannot_take_are_refused_together(inputs, settings, wrong, kind):
    from types import SimpleNamespace

    from kdistill.data.base import ArrayDataset
    from kdistill.run.config import load_config
    from kdistill.run.plan import check_input_transforms

    splits = SimpleNamespace(train=ArrayDataset(inputs, torch.zeros(len(inputs), dtype=torch.long)))
    recipe = load_config(None, settings)
    if wrong is None:  # a loaded teacher's augmentation never applies
        check_input_transforms(recipe, splits)
        return
    with pytest.raises(ConfigError) as error:
        check_input_transforms(recipe, splits)
    assert str(error.value).startswith(f"{wrong} transform") and f"({kind}" in str(error.value)
