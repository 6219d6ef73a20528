"""The input kinds of issue 27 for the CLI fuzzer: 16-bit and huge images, tables of many
columns, text cells of megabytes and token-id files declaring gigabytes (sparse), each a
strategy drawing ``(files, overrides, sparse)``: the files to lay down, the settings that
read them, and the sizes to which some files are extended without writing (``os.truncate``).
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zlib

import numpy as np
from hypothesis import strategies as st


def png_of(width: int, height: int, pixels: bytes) -> bytes:
    """A grey 8-bit PNG of width × height around compressed ``pixels`` (the IDAT chunk)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@functools.cache
def black_png(width: int = 9000, height: int = 9000) -> bytes:
    """A valid black PNG over the 8192² pixels an image may decode to, in about 80 kB."""
    compressor, row = zlib.compressobj(), bytes(width + 1)  # each row: filter type 0, then pixels
    return png_of(
        width,
        height,
        b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush(),
    )


def png16_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A 16-bit grey PNG (PIL mode I;16), which convert("L") used to clip to white."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(
        np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)
    ).save(buffer, "PNG")
    return buffer.getvalue()


@st.composite
def tables(draw):
    """A CSV of 3 columns or of more than the 10,000 a table may have, now and then one class."""
    columns = draw(st.sampled_from([3, 3, 3, 10_001, 200_000]))
    classes = draw(st.sampled_from([2, 3, 1]))
    header = ",".join([*(f"f{j}" for j in range(columns - 1)), "label"])
    rows = [
        f"{i % 7}," * (columns - 1) + f"c{i % classes}"
        for i in range(draw(st.sampled_from([40, 40, 2])))
    ]
    bom = b"\xef\xbb\xbf" if draw(st.integers(0, 5)) == 0 else b""
    return (
        {"table.csv": bom + "\n".join([header, *rows]).encode() + b"\n"},
        [
            "data.dataset=table",
            "data.path=table.csv",
            "data.options.label=label",
            "student.model=mlp_tiny",
            "train.augment=none",
            "train.mix=none",
        ],
        {},
    )


@functools.cache
def tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(
        models.WordLevel(
            {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "film": 4}, unk_token="[UNK]"
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str().encode()


TEXT_MODEL = "{vocab_size: 5, embed_dim: 8, channels: 8}"


@st.composite
def texts(draw):
    """Labelled text whose second cell is 10 characters or up to 50 MB (a tokenizer handed it
    whole ran out of memory and aborted), as CSV or JSONL."""
    cell = draw(st.sampled_from([10, 10, 10_000, 3 * 10**6, 50 * 10**6]))
    classes = draw(
        st.sampled_from(["pos", "neg"]) if draw(st.integers(0, 5)) == 0 else st.just(None)
    )
    records = [
        ("good film" if i % 2 else "bad film", classes or ("pos" if i % 2 else "neg"))
        for i in range(40)
    ]
    records[1] = ("good " * (cell // 5), records[1][1])
    if draw(st.booleans()):
        name, data = (
            "reviews.csv",
            "\n".join(["text,label", *(f"{t},{label}" for t, label in records)]) + "\n",
        )
    else:
        name, data = (
            "reviews.jsonl",
            "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in records),
        )
    return (
        {name: data.encode(), "tokenizer.json": tokenizer_json()},
        [
            "data.dataset=labelled_text",
            f"data.path={name}",
            "data.options.tokenizer=tokenizer.json",
            "data.options.max_length=16",
            "teacher.model=text_cnn",
            f"teacher.kwargs={TEXT_MODEL}",
            "student.model=text_cnn",
            f"student.kwargs={TEXT_MODEL}",
            "train.augment=none",
            "train.mix=none",
        ],
        {},
    )


def npy_header(shape: tuple[int, ...], descr: str = "<i8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


GPT = "{n_layer: 1, n_head: 2, n_embd: 8, dropout: 0.0}"


@st.composite
def token_ids(draw):
    """Token ids: a small valid .npy, a sparse one declaring 24 GB, or a header promising more
    than the file holds."""
    kind = draw(st.sampled_from(["small", "small", "sparse", "short"]))
    sparse = {}
    if kind == "small":
        buffer = io.BytesIO()
        np.save(buffer, np.tile(np.arange(12, dtype=np.int32), 60))
        data = buffer.getvalue()
    elif kind == "sparse":
        data = npy_header((3 * 10**9,))
        sparse = {"ids.npy": len(data) + 24 * 10**9}
    else:
        data = npy_header((10**6,)) + bytes(16)
    return (
        {"ids.npy": data},
        [
            "data.dataset=token_ids",
            "data.path=ids.npy",
            "data.options.block_size=16",
            "teacher.model=gpt",
            f"teacher.kwargs={GPT}",
            "student.model=gpt",
            f"student.kwargs={GPT}",
            "method=token_kd",
            "train.augment=none",
            "train.mix=none",
            *draw(
                st.lists(
                    st.sampled_from(
                        ["data.options.max_bytes=100", "data.options.vocab_size=12", "method=kd"]
                    ),
                    max_size=1,
                )
            ),
        ],
        sparse,
    )
