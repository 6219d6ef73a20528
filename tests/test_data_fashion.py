"""Fashion-MNIST from IDX files: the official split, train-only statistics, stratified subsets,
and one clear line for every way the files can be missing or broken.

Most tests write a tiny IDX set themselves, so they run without the Debian package; one test
reads the real files when ``dataset-fashion-mnist`` is installed.
"""

import gzip

import numpy as np
import pytest

from kdistill.data import DATASETS, describe_dataset, load_dataset
from kdistill.data.fashion import DEFAULT_DIR, read_idx
from kdistill.errors import DataError

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 5
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: two zero bytes, the type code, the rank, big-endian sizes, the values."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    dtype = {0x08: ">u1", 0x0D: ">f4"}[type_code]
    return header + array.astype(dtype).tobytes()


def write_fashion(root, *, gzipped=("train_images", "test_labels"), seed=0):
    """Write a tiny Fashion-MNIST (20 / 5 images per class), some files gzipped, some not.

    Returns the arrays written, so tests can check what the loader made of them."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        # Each class has its own brightness, so a split's statistics depend on its class mix.
        images = rng.integers(0, 100, (len(labels), 28, 28)) + 15 * labels[:, None, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
    root.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = idx_bytes(array)
        if key in gzipped:
            (root / f"{STEMS[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (root / STEMS[key]).write_bytes(data)
    return arrays


@pytest.fixture()
def tiny(tmp_path):
    root = tmp_path / "fashion"
    return root, write_fashion(root)


def test_registered_with_a_description():
    assert "fashion_mnist" in DATASETS
    assert "Fashion-MNIST" in describe_dataset("fashion_mnist")


def test_keeps_the_official_test_split_and_carves_validation_from_train(tiny):
    root, arrays = tiny
    splits = load_dataset("fashion_mnist", path=str(root), val_fraction=0.1, test_fraction=0.3)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    # test_fraction is ignored: the test split is the whole t10k file, in file order
    assert len(splits.test) == 10 * TEST_PER_CLASS
    assert splits.test.targets.tolist() == arrays["test_labels"].tolist()
    # validation: 10% of each class of the train file (2 of 20), the rest trains
    assert np.all(np.bincount(splits.val.targets.numpy(), minlength=10) == 2)
    assert np.all(np.bincount(splits.train.targets.numpy(), minlength=10) == 18)
    assert splits.identity["sizes"] == {"train": 180, "val": 20, "test": 50}
    sample = splits.train[0]
    assert set(sample) == {"input", "target", "index"} and sample["input"].shape == (1, 28, 28)


def test_standardised_with_the_train_split_statistics_only(tiny):
    root, arrays = tiny
    splits = load_dataset("fashion_mnist", path=str(root))
    x = splits.train.inputs
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(correction=0).item() - 1) < 1e-5
    # The test images are mapped with the train statistics, not their own.
    normalise = splits.identity["normalise"]
    expected = (arrays["test_images"][:, None] / 255.0 - normalise["mean"]) / normalise["std"]
    np.testing.assert_allclose(splits.test.inputs.numpy(), expected, rtol=0, atol=1e-5)
    # ... and those statistics exclude validation: recompute them from the train split alone.
    train_pixels = splits.train.inputs.numpy() * normalise["std"] + normalise["mean"]
    everything = arrays["train_images"] / 255.0
    assert abs(train_pixels.mean() - normalise["mean"]) < 1e-6
    assert abs(everything.mean() - normalise["mean"]) > 1e-6


def test_the_seed_fixes_the_validation_split(tiny):
    root, _ = tiny
    a, b, c = (load_dataset("fashion_mnist", path=str(root), seed=s) for s in (0, 0, 1))
    assert a.val.inputs.equal(b.val.inputs) and a.identity == b.identity
    assert not a.val.inputs.equal(c.val.inputs)
    assert a.test.inputs.shape == c.test.inputs.shape  # the test split never depends on the seed


def test_subset_is_class_balanced_and_keeps_the_official_proportions(tiny):
    root, arrays = tiny
    splits = load_dataset("fashion_mnist", path=str(root), subset=100)
    sizes = splits.identity["sizes"]
    assert sum(sizes.values()) == 100
    assert sizes["test"] == 20  # 100 · 50 / 250 from the test file
    for part in (splits.train, splits.val, splits.test):
        assert set(part.targets.tolist()) == set(range(10))
    # the test part comes from the test file only
    test_rows = {img.tobytes() for img in arrays["test_images"]}
    restored = splits.test.inputs.numpy()[:, 0] * splits.identity["normalise"]["std"]
    restored = np.round((restored + splits.identity["normalise"]["mean"]) * 255).astype(np.uint8)
    assert all(img.tobytes() in test_rows for img in restored)
    with pytest.raises(DataError, match="data.subset"):
        load_dataset("fashion_mnist", path=str(root), subset=5)


def test_reads_plain_and_gzipped_idx_alike(tmp_path):
    plain, gzipped = tmp_path / "plain", tmp_path / "gz"
    write_fashion(plain, gzipped=())
    write_fashion(gzipped, gzipped=tuple(STEMS))
    a = load_dataset("fashion_mnist", path=str(plain))
    b = load_dataset("fashion_mnist", path=str(gzipped))
    assert a.train.inputs.equal(b.train.inputs) and a.test.targets.equal(b.test.targets)
    # the identity (a teacher's fingerprint) hashes the values, not the compression
    assert a.identity["sha256"] == b.identity["sha256"]
    write_fashion(tmp_path / "other", seed=1)
    other = load_dataset("fashion_mnist", path=str(tmp_path / "other"))
    assert other.identity["sha256"] != a.identity["sha256"]


def test_read_idx_handles_other_value_types(tmp_path):
    values = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    (tmp_path / "floats.idx").write_bytes(idx_bytes(values, type_code=0x0D))
    magic, array = read_idx(tmp_path / "floats.idx")
    assert magic == 0x0D03 and array.shape == (2, 3, 4)
    np.testing.assert_array_equal(array, values)


def test_missing_files_say_how_to_get_them_in_one_line(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", path=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.path" in message
    assert "train-images-idx3-ubyte" in message
    write_fashion(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"file\(s\) t10k-labels-idx1-ubyte missing"):
        load_dataset("fashion_mnist", path=str(tmp_path / "partial"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_dataset("fashion_mnist", path=str(tmp_path / "a_file"))


def _damage(root, stem, change):
    """Rewrite one file (found plain or gzipped) as ``change(decompressed bytes)``, uncompressed."""
    for file in (root / stem, root / f"{stem}.gz"):
        if file.exists():
            data = file.read_bytes()
            data = gzip.decompress(data) if file.suffix == ".gz" else data
            file.unlink()
            (root / stem).write_bytes(change(data))
            return


@pytest.mark.parametrize(
    "key, change, message",
    [
        ("train_labels", lambda d: d[:-7], "truncated"),
        ("train_images", lambda d: d[:6], "truncated IDX header"),
        ("test_images", lambda d: d + b"\0\0", "longer than its header says"),
        ("test_labels", lambda d: b"label,image\n1,2\n", "not an IDX file"),
        ("train_labels", lambda d: d[:-1] + b"\x0a", "label 10 is not a"),
        ("train_labels", lambda d: idx_bytes(np.zeros((3, 4, 4))), "magic number 2051, expected"),
        ("test_labels", lambda d: idx_bytes(np.zeros(7)), "50 images but .* 7 labels"),
    ],
    ids=["truncated", "short-header", "extra-bytes", "csv", "bad-label", "swapped", "counts"],
)
def test_broken_files_are_a_data_error_naming_the_file(tiny, key, change, message):
    root, _ = tiny
    stem = STEMS[key]
    _damage(root, stem, change)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("fashion_mnist", path=str(root))
    assert stem in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_gzip_download_names_the_file(tiny):
    root, _ = tiny
    file = root / f"{STEMS['train_images']}.gz"
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(DataError, match="damaged or truncated") as error:
        load_dataset("fashion_mnist", path=str(root))
    assert file.name in str(error.value)


INSTALLED = all(
    (DEFAULT_DIR / f"{stem}.gz").is_file() or (DEFAULT_DIR / stem).is_file()
    for stem in STEMS.values()
)


@pytest.mark.skipif(
    not INSTALLED,
    reason=f"Fashion-MNIST IDX files not in {DEFAULT_DIR}: apt-get install dataset-fashion-mnist",
)
def test_the_real_dataset_from_the_debian_package():
    splits = load_dataset("fashion_mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54_000, 6_000, 10_000)
    assert np.all(np.bincount(splits.train.targets.numpy()) == 5_400)
    assert np.all(np.bincount(splits.test.targets.numpy()) == 1_000)
    # The dataset's well-known pixel statistics (0.2860, 0.3530 over the 60k training images).
    normalise = splits.identity["normalise"]
    assert abs(normalise["mean"] - 0.2860) < 2e-3 and abs(normalise["std"] - 0.3530) < 2e-3
    small = load_dataset("fashion_mnist", subset=700)
    assert small.identity["sizes"] == {"train": 540, "val": 60, "test": 100}
    assert set(small.test.targets.tolist()) == set(range(10))
