"""Bundled and user data: splits are stratified,
disjoint, fixed by the seed; bad data is refused."""

import numpy as np
import pytest
import torch

from kdistill.data import ArrayDataset, load_dataset, make_splits, stratified_split
from kdistill.errors import DataError


def test_stratified_split_is_disjoint_complete_balanced_and_seeded():
    y = np.repeat(np.arange(10), 50)
    a = stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    b = stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    c = stratified_split(y, (0.7, 0.1, 0.2), seed=1)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    joined = np.concatenate(a)
    assert len(joined) == len(y) == len(np.unique(joined))
    for part, fraction in zip(a, (0.7, 0.1, 0.2)):
        assert np.all(np.bincount(y[part], minlength=10) == round(50 * fraction))


def test_mnist_from_the_wheel():
    splits = load_dataset("mnist")
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    sample = splits.train[0]
    assert set(sample) == {"input", "target", "index"} and sample["index"].item() == 0
    train_targets = splits.train.targets.numpy()
    assert np.all(np.bincount(train_targets) == 350)  # the file is sorted by label: shuffled here
    x = splits.train.inputs
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2  # train statistics
    # the test split shares no image with the train split
    train_rows = {row.numpy().tobytes() for row in splits.train.inputs[:500]}
    assert not any(row.numpy().tobytes() in train_rows for row in splits.test.inputs)


def test_subset_keeps_every_class():
    splits = load_dataset("mnist", subset=200)
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == 200
    assert set(splits.test.targets.tolist()) == set(range(10))


def test_digits():
    splits = load_dataset("digits")
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


def test_npz_user_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path, x=rng.integers(0, 255, (120, 12, 12), dtype=np.uint8), y=np.repeat(np.arange(3), 40)
    )
    splits = load_dataset("npz", path=str(path))
    assert splits.input_shape == (1, 12, 12) and splits.num_classes == 3


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.full((30, 4), np.nan, dtype=np.float32), np.zeros(30, int), "NaN"),
        (np.zeros((30, 4), np.float32), np.full(30, -1), "class indices"),
        (np.zeros((0, 4), np.float32), np.zeros(0, int), "empty"),
        (np.zeros((30, 4), np.float32), np.zeros(29, int), "29 labels"),
    ],
)
def test_bad_arrays_are_refused_with_the_file_named(tmp_path, x, y, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("npz", path=str(path))
    assert "bad.npz" in str(error.value)


def test_npz_problems_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_dataset("npz")
    np.savez(tmp_path / "wrong.npz", images=np.zeros((3, 2)))
    with pytest.raises(DataError, match="np.savez"):
        load_dataset("npz", path=str(tmp_path / "wrong.npz"))
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="fake.npz"):
        load_dataset("npz", path=str(tmp_path / "fake.npz"))


def test_labels_out_of_range_for_the_classes():
    with pytest.raises(DataError, match="out of range for 3 classes"):
        make_splits(
            np.zeros((30, 2), np.float32),
            np.arange(30) % 5,
            val_fraction=0.1,
            test_fraction=0.2,
            seed=0,
            num_classes=3,
        )


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    splits = load_dataset(
        "folder", path=str(tmp_path), image_size=16, channels=1
    )  # grayscale when asked
    assert splits.class_names == ["cat", "dog"] and splits.input_shape == (1, 16, 16)
    rgb = load_dataset("folder", path=str(tmp_path), image_size=16)  # colour stays colour
    assert rgb.input_shape == (3, 16, 16)
    (tmp_path / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("folder", path=str(tmp_path))


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean mnist"):
        load_dataset("mnsit")


def test_array_dataset_rejects_mismatch():
    with pytest.raises(DataError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(2))
