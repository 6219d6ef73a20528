"""`kdistill.distill` and `kdistill.fit` on what a PyTorch user holds (issue 14, item 1): NumPy
arrays, tensors, a TensorDataset, datasets of tuples or dicts, DataLoaders, Hugging Face
datasets, an ONNX teacher file, a teacher cache; mismatches named on both sides."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdistill
from kdistill import Distiller, Term, distill
from kdistill.methods import hinton_kd

CPU = {"progress": False, "device": "cpu"}


def blobs(n: int = 240, seed: int = 0):
    """Three Gaussian classes in 6-d, float64 as NumPy makes them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(0, 3, (3, 6))
    return centres[y] + rng.normal(0, 1, (n, 6)), y


def trained_teacher(x, y) -> nn.Module:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(teacher.parameters(), 1e-2)
    inputs, targets = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(teacher(inputs), targets).backward()
        optimizer.step()
    return teacher


def student() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture(scope="module")
def data():
    x, y = blobs()
    return x, y, trained_teacher(x, y)


def as_tensors(x, y):
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def kinds(x, y):
    tx, ty = as_tensors(x, y)
    pairs = TensorDataset(tx, ty)
    dicts = [{"input": tx[i], "target": int(ty[i])} for i in range(len(ty))]
    hf_rows = [{"features": x[i].tolist(), "label": int(y[i])} for i in range(len(y))]
    return {
        "numpy arrays": (x, y),
        "tensors": (tx, ty),
        "TensorDataset": pairs,
        "list of dicts": dicts,
        "DataLoader of tuples": DataLoader(
            pairs, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        "DataLoader of dicts": DataLoader(dicts, batch_size=32, shuffle=True),
        "dict rows with a label column": hf_rows,
    }


@pytest.mark.parametrize("kind", list(kinds(*blobs(8))))
def test_distill_takes_every_kind_of_data_and_the_student_learns(data, kind):
    x, y, teacher = data
    train = kinds(x[:180], y[:180])[kind]
    val = kinds(x[180:], y[180:])[kind]
    result = distill(teacher, student(), train, val, epochs=15, lr=1e-2, **CPU)
    assert len(result.history) == 15
    assert result.metrics["val/accuracy"] > 0.9, kind  # three separable classes, learned


def test_fit_takes_a_loader_of_tensor_dataset_batches_and_a_plain_teacher(data):
    x, y, teacher = data
    model = student()
    loader = DataLoader(TensorDataset(*as_tensors(x, y)), batch_size=32, shuffle=True)
    history = kdistill.fit(
        Distiller(model, hinton_kd()),
        loader,
        teacher=teacher,
        val_data=(x, y),
        epochs=10,
        lr=1e-2,
        progress=False,
    )
    assert history[-1]["val/accuracy"] > 0.9


def test_hf_datasets_dataset(data):
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face datasets is not installed (pip install datasets)"
    )
    x, y, teacher = data
    rows = datasets.Dataset.from_dict({"features": x.tolist(), "label": y.tolist()}).with_format(
        "torch"
    )
    result = distill(teacher, student(), rows, rows, epochs=15, lr=1e-2, **CPU)
    assert result.metrics["val/accuracy"] > 0.9


def test_connectors_are_returned_with_the_student(data):
    x, y, teacher = data
    terms = [
        Term("ce", "ce", teacher=None),
        Term("hint", "hint", student="1", teacher="1", connector="linear", weight=0.1),
    ]
    result = distill(teacher, student(), (x, y), epochs=2, terms=terms, **CPU)
    regressor = result.connectors["hint"]
    assert (
        isinstance(regressor, nn.Module)
        and sum(p.numel() for p in regressor.parameters()) == 8 * 32 + 32
    )


def test_cache_path_is_built_once_and_reused(data, tmp_path):
    x, y, teacher = data
    first = distill(teacher, student(), (x, y), (x, y), epochs=3, cache=tmp_path / "cache", **CPU)
    assert (tmp_path / "cache" / "meta.json").is_file()
    stamp = (tmp_path / "cache" / "meta.json").stat().st_mtime_ns
    second = distill(teacher, student(), (x, y), (x, y), epochs=3, cache=tmp_path / "cache", **CPU)
    assert (tmp_path / "cache" / "meta.json").stat().st_mtime_ns == stamp
    # Read from disk, the teacher's outputs give the very same training as the live teacher.
    live = distill(teacher, student(), (x, y), (x, y), epochs=3, **CPU)
    assert first.history[-1]["loss"] == pytest.approx(live.history[-1]["loss"], rel=1e-4)
    assert second.history[-1]["loss"] == pytest.approx(live.history[-1]["loss"], rel=1e-4)
    # Another teacher is refused, not silently served the first one's outputs.
    with pytest.raises(kdistill.errors.UserError, match="cache"):
        distill(
            trained_teacher(x, (y + 1) % 3),
            student(),
            (x, y),
            epochs=1,
            cache=tmp_path / "cache",
            **CPU,
        )


def export_onnx(model: nn.Module, path, features: int = 6) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, features),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )


def test_onnx_file_teaches_like_the_module_it_was_exported_from(data, tmp_path):
    pytest.importorskip("onnxruntime")
    x, y, teacher = data
    export_onnx(teacher, tmp_path / "teacher.onnx")
    from_file = distill(
        str(tmp_path / "teacher.onnx"), student(), (x, y), (x, y), epochs=20, lr=1e-2, **CPU
    )
    from_module = distill(teacher, student(), (x, y), (x, y), epochs=20, lr=1e-2, **CPU)
    assert from_file.history[-1]["loss/kd"] == pytest.approx(
        from_module.history[-1]["loss/kd"], rel=1e-4
    )
    assert from_file.metrics["val/accuracy"] > 0.9
    feature = [Term("hint", "hint", student="1", teacher="1", connector="linear")]
    with pytest.raises(kdistill.errors.UserError, match="ONNX teacher gives only its output"):
        distill(str(tmp_path / "teacher.onnx"), student(), (x, y), epochs=1, terms=feature, **CPU)


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (
            lambda t, s, x, y: (t, nn.Linear(6, 5), x, y),
            "the teacher has 3 outputs but the student has 5",
        ),
        (
            lambda t, s, x, y: (t.double(), s, x, y),
            "the teacher, Sequential (torch.float64 on cpu), "
            "cannot run on the inputs ((2, 6) torch.float32 on cpu)",
        ),
        (lambda t, s, x, y: (t, s.half(), x, y), "the student, Sequential (torch.float16 on cpu)"),
        (lambda t, s, x, y: (t, s, x[:, :4], y), "cannot run on the inputs ((2, 4)"),
        (lambda t, s, x, y: (t, s, x, y + 7), "the data has label"),
        (lambda t, s, x, y: (t, s, x, y[:10]), "x has 240 samples but y has 10"),
        (lambda t, s, x, y: (t, s, np.array(["a"] * len(y)), y), "holds text"),
        (lambda t, s, x, y: ("teacher.pt", s, x, y), "load_weights"),
    ],
)
def test_mismatches_are_one_error_naming_both_sides(data, spoil, fragment):
    x, y, teacher = data
    teacher_in, student_in, x_in, y_in = spoil(teacher, student(), x, y)
    with pytest.raises(
        kdistill.errors.UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")
    ) as caught:
        distill(teacher_in, student_in, (x_in, y_in), epochs=1, **CPU)
    assert "\n" not in str(caught.value)
    teacher.float()


def test_public_names_are_exported():
    for name in (
        "distill",
        "fit",
        "DistillResult",
        "as_dataset",
        "as_loader",
        "ArrayDataset",
        "OnnxModel",
        "load_weights",
        "MismatchError",
    ):
        assert name in kdistill.__all__ and hasattr(kdistill, name), name


def _marked(y, at: int, value):
    y = y.astype(type(value)) if isinstance(value, float) else y.copy()
    y[at] = value
    return y


# Each way labels can fail to be class indices, refused with kdistill's own error naming the
# argument and the fix (PyTorch's "expected scalar type Long", "Target -1 is out of bounds",
# "0D or 1D target tensor expected" or a sampler's "num_samples=0" before).
DataError, MismatchError = kdistill.errors.DataError, kdistill.MismatchError


@pytest.mark.parametrize(
    "spoil, error, fragment",
    [
        (
            lambda x, y: ((x, _marked(y, 4, 1.5)), None),
            DataError,
            r"train_data: y\[4\] is 1.5, not a class index: labels are whole numbers",
        ),
        (lambda x, y: ((x, _marked(y, 3, np.nan)), None), DataError, r"train_data: y\[3\] is nan"),
        (
            lambda x, y: ((x, _marked(y, 5, -1)), None),
            DataError,
            r"train_data: y\[5\] is -1: .*drop the samples without a label",
        ),
        (
            lambda x, y: ((x, _marked(y, 9, 7)), None),
            MismatchError,
            r"train_data: the data has label 7 \(y\[9\]\) "
            r"but the models have 3 outputs: labels are 0..2",
        ),
        (
            lambda x, y: ((x, np.stack([y, y], 1)), None),
            DataError,
            r"train_data: y has shape \(240, 2\), .*shape "
            r"\(240,\) \(for one-hot rows, y.argmax\(1\)\)",
        ),
        (lambda x, y: ((x[:0], y[:0]), None), DataError, "train_data: x and y hold no samples"),
        (
            lambda x, y: (([[0.0, 1.0], [2.0]], [0, 1]), None),
            DataError,
            "train_data: x or y is a list of rows of different lengths",
        ),
        (lambda x, y: ((x, y), (x, _marked(y, 2, -1))), DataError, r"val_data: y\[2\] is -1"),
    ],
)
def test_labels_that_are_not_class_indices_are_refused(data, spoil, error, fragment):
    x, y, teacher = data
    train, val = spoil(x, y)
    with pytest.raises(error, match=fragment) as caught:
        distill(teacher, student(), train, val, epochs=1, **CPU)
    assert isinstance(caught.value, kdistill.errors.UserError)


def test_fewer_than_two_classes_are_refused(data):
    """A one-class task (issue 27.14) trains models that score 100 % and learn nothing: refused
    when the training labels hold one class, and when the models score one class."""
    x, y, teacher = data
    with pytest.raises(DataError, match="train_data: every label is 0: .*2 or more classes"):
        distill(teacher, student(), (x, np.zeros_like(y)), epochs=1, **CPU)
    one = nn.Sequential(nn.Linear(x.shape[1], 1))
    with pytest.raises(MismatchError, match="the models score 1 class: .*2 or more classes"):
        distill(
            one, nn.Sequential(nn.Linear(x.shape[1], 1)), (x, np.zeros_like(y)), epochs=1, **CPU
        )


def test_whole_float_labels_a_column_of_labels_and_lists_train_as_class_indices(data):
    """The rule: labels that are whole numbers in any dtype are those integers, a column vector
    (N, 1) is read as (N,), and a tuple of two lists of numbers is (x, y) arrays."""
    x, y, teacher = data
    x = x.astype(np.float32)
    reference = distill(teacher, student(), (x, y), epochs=2, **CPU).history[-1]["loss"]
    for train in ((x, y.astype(np.float64)), (x, y[:, None]), (x.tolist(), y.tolist())):
        assert distill(teacher, student(), train, epochs=2, **CPU).history[-1]["loss"] == reference


@pytest.mark.parametrize("epochs", [-1, 0, 2.5])
def test_epochs_below_one_are_refused_not_an_untrained_student(data, epochs):
    x, y, teacher = data
    # Refused as a recipe's train.epochs is (TrainConfig: ge=1, whole), in one line naming it.
    one_line = rf"^distill\(\): train\.epochs: [^\n]*\(got {epochs}\)$"
    with pytest.raises(kdistill.errors.ArgumentError, match=one_line):
        distill(teacher, student(), (x, y), epochs=epochs, **CPU)
