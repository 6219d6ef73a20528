"""Inputs of any size and kind through the console script (issue 27, items 10, 14, 15c): each
bounded before it is read, refused in one line with exit 2 under a memory cap, or read. The
helpers (the console script under a cap, the one-line check) are test_hardening's."""

from __future__ import annotations

import shutil
import zlib

import numpy as np
import pytest
from conftest import MEMORY_CAP, kdistill_cli
from conftest import TINY_RECIPE as QUICK
from test_hardening import (
    assert_user_error,
    image_folder,
    png_claiming,
    refused_without_changes,
)


def black_png(width: int, height: int) -> bytes:
    """A valid black PNG, compressed row by row: 13000 × 13000 pixels in about 170 kB."""
    compressor, row = zlib.compressobj(), bytes(width + 1)  # each row: filter type 0, then pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_claiming(width, height, pixels)


# --- issue 27, item 10: inputs of any size, each bounded before it is read -------------------


@pytest.mark.integration
def test_cli_bounds_a_huge_sparse_npy_of_token_ids(tmp_path):
    header = {"descr": "<i8", "fortran_order": False, "shape": (3 * 10**9,)}
    with (tmp_path / "ids.npy").open("wb") as file:  # sparse: a header, then 24 GB of nothing
        np.lib.format.write_array_header_1_0(file, header)
        size = file.tell() + 24 * 10**9
        file.truncate(size)
    result = kdistill_cli(
        "check",
        "data.dataset=token_ids",
        "data.path=ids.npy",
        "teacher.model=gpt",
        "student.model=gpt",
        "method=token_kd",
        cwd=tmp_path,
        memory=MEMORY_CAP,
    )
    assert_user_error(result, "ids.npy: its array holds 24,000,000,000 bytes", "options.max_bytes")
    assert (tmp_path / "ids.npy").stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == ["ids.npy"]


@pytest.mark.integration
def test_cli_refuses_huge_images_from_their_headers(tmp_path):
    huge = black_png(13_000, 13_000)
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "images" / name / f"{i}.png").write_bytes(huge)
    refused_without_changes(
        tmp_path,
        "check",
        *QUICK,
        "data.dataset=folder",
        "data.path=images",
        "teacher.model=cnn_tiny",
        fragments=("0.png: 13,000×13,000 pixels, more than the 67,108,864 an image may decode",),
        memory=MEMORY_CAP,
    )


@pytest.mark.integration
def test_cli_refuses_a_csv_of_a_million_columns_from_its_header(tmp_path):
    columns = 10**6
    header = ",".join(f"c{i}" for i in range(columns - 1)) + ",label"
    row = "0," * (columns - 1)
    (tmp_path / "wide.csv").write_text("\n".join([header, row + "a", row + "b"]) + "\n")
    refused_without_changes(
        tmp_path,
        "check",
        *QUICK,
        "data.dataset=table",
        "data.path=wide.csv",
        "data.options.label=label",
        fragments=("wide.csv: ", "columns or more, more than the limit of 10,000", "dataset=npz"),
        memory=MEMORY_CAP,
    )


@pytest.mark.integration
def test_cli_reads_a_50_mb_text_cell_cut_to_what_the_tokenizer_keeps(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    rows = [f"{'good' if i % 2 else 'bad'} film,{'pos' if i % 2 else 'neg'}" for i in range(40)]
    rows[1] = "good " * 10_000_000 + ",pos"  # one 50 MB cell
    (tmp_path / "reviews.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    model = "{vocab_size: 4, embed_dim: 8, channels: 8}"
    result = kdistill_cli(
        "check",
        *QUICK,
        "data.dataset=labelled_text",
        "data.path=reviews.csv",
        "data.options.tokenizer=tokenizer.json",
        "data.options.max_length=16",
        "teacher.model=text_cnn",
        f"teacher.kwargs={model}",
        "student.model=text_cnn",
        f"student.kwargs={model}",
        "train.augment=none",
        "train.mix=none",
        cwd=tmp_path,
        memory=4 * 2**30,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- issue 27, item 14: classes ----------------------------------------------------------------


def test_cli_refuses_a_folder_of_one_class(tmp_path):
    shutil.rmtree(image_folder(tmp_path / "images") / "dog")
    refused_without_changes(
        tmp_path,
        "run",
        *QUICK,
        "data.dataset=folder",
        "data.path=images",
        "teacher.model=cnn_tiny",
        fragments=("images: 1 class ('cat') in 10 labelled samples; a classifier needs",),
    )
    assert not (tmp_path / "runs").exists()


# --- issue 27, item 15: messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, field",
    [
        ("method=kd", "method=kd: ce, kd compare"),
        ("terms=[{name: soft, loss: dkd}]", "terms (soft): dkd compare"),
    ],
)
def test_cli_names_token_kd_for_a_classifier_loss_on_token_data(tmp_path, setting, field):
    np.save(tmp_path / "ids.npy", np.tile(np.arange(12, dtype=np.int32), 100))
    refused_without_changes(
        tmp_path,
        "check",
        "data.dataset=token_ids",
        "data.path=ids.npy",
        "data.options.block_size=16",
        "teacher.model=gpt",
        "student.model=gpt",
        "teacher.augment=none",
        "train.augment=none",
        "train.mix=none",
        setting,
        fragments=(field, "holds token sequences for a language model: use method=token_kd"),
    )


# --- issue 32: a student with a tokenizer of its own ------------------------------------------

PLAY = "{name}\n\nACT I\n\nKING:\nWhat say'st thou, {name}? Speak, café crème, 日本!\n\n"


def cross_tokenizer_data(tmp_path):
    """Five small plays (the four held out and one to train on) and a teacher tokenizer."""
    from test_cross_tokenizer import byte_level_bpe

    texts = []
    for name in ("hamlet", "the-tempest", "twelfth-night", "julius-caesar", "macbeth"):
        text = PLAY.format(name=name) * 40
        (tmp_path / "plays" / "genre").mkdir(parents=True, exist_ok=True)
        (tmp_path / "plays" / "genre" / f"{name}.md").write_text(text, encoding="utf-8")
        texts.append(text)
    byte_level_bpe(texts, 320).save(str(tmp_path / "teacher.json"))
    return [
        "data.dataset=shakespeare",
        "data.path=plays",
        "data.options.tokenizer=teacher.json",
        "data.options.block_size=16",
        "teacher.model=gpt",
        "student.model=gpt",
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    "settings, fragments",
    [
        (
            ["data.options.student_tokenizer=lossy.json", "method=cross_tokenizer"],
            ("data.options.student_tokenizer: the tokenizer does not give the text back",),
        ),
        (
            [
                "data.options.student_tokenizer=bpe:300",
                "data.options.block_size=2",
                "data.options.min_aligned=0.9",
                "method=cross_tokenizer",
            ],
            ("the alignment covers", "data.options.min_aligned=0.9"),
        ),
        (
            ["data.options.student_tokenizer=bpe:300", "method=token_kd"],
            ("method=token_kd: the term(s) kd compare", "use method=cross_tokenizer"),
        ),
        (
            ["data.options.student_tokenizer=bpe:300", "method=cross_tokenizer"],
            ("a teacher with a tokenizer of its own needs teacher.epochs=0",),
        ),
        (
            [
                "data.options.student_tokenizer=bpe:300",
                "method=cross_tokenizer",
                "teacher.epochs=0",
                "teacher.cache=true",
            ],
            ("a teacher with a tokenizer of its own needs teacher.cache_topk with teacher.cache",),
        ),
    ],
    ids=[
        "cannot round-trip",
        "too little aligned",
        "shared-vocabulary term",
        "teacher trained on student tokens",
        "cached teacher without a top k",
    ],
)
def test_cli_refuses_what_cannot_distill_across_tokenizers(tmp_path, settings, fragments):
    from test_cross_tokenizer import byte_level_bpe
    from tokenizers import normalizers

    data = cross_tokenizer_data(tmp_path)
    lossy = byte_level_bpe([PLAY], 300)
    lossy.normalizer = normalizers.Lowercase()  # "KING" comes back as "king"
    lossy.save(str(tmp_path / "lossy.json"))
    result = kdistill_cli(
        "check", *data, *settings, cwd=tmp_path, env={"KDISTILL_HOME": str(tmp_path / "home")}
    )
    assert_user_error(result, *fragments)
