"""Exports that stand alone: what a deployed ONNX file must carry to be used without kdistill's
training code, a model card beside it, and ``kdistill predict`` to show it works.

Each exported file carries, in its ONNX ``metadata_props``:
- ``kdistill.classes``: the class names, JSON, in output order;
- ``kdistill.preprocessing``: JSON with every input's name, per-sample shape and dtype
  (``"sequence"`` where the length is dynamic), the standardisation applied after loading
  (``x = (x - mean) / std``), how an image becomes the input, and the tokenizer file of a
  text model (copied beside the ONNX files), and a table's label column (``label``), which
  is not an input;
- ``kdistill.recipe`` and ``kdistill.test``: the recipe's name and the measured test score.

``predict`` needs only onnxruntime and NumPy (Pillow for images, ``tokenizers`` for text).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from kdistill.errors import UserError
from kdistill.io.files import replace_atomically
from kdistill.io.pixels import read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TOKENIZER_FILE = "tokenizer.json"


def preprocessing(example, identity: dict, *, tokenizer: bool = False) -> dict:
    """What a caller must do to raw data before the model sees it (see the module's doc)."""
    from kdistill.deploy.onnx import input_names, is_sequence

    names = input_names(example)
    tensors = [example[n] for n in names] if isinstance(example, Mapping) else [example]
    inputs = []
    for name, tensor in zip(names, tensors):
        shape = list(tensor.shape)
        if is_sequence(tensor.unsqueeze(0)):
            shape = ["sequence"]
        inputs.append(
            {"name": name, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")}
        )
    spec = {"inputs": inputs, "normalise": identity.get("normalise")}
    if identity.get("label"):  # a table's label column: a CSV for predict must not hold it
        spec["label"] = identity["label"]
    first = tensors[0]
    if first.is_floating_point() and first.dim() == 3 and first.shape[0] in (1, 3):
        spec["image"] = {
            "mode": "L" if first.shape[0] == 1 else "RGB",
            "size": list(first.shape[1:]),
            "scale": "pixel values / 255, then normalise",
        }
    if tokenizer:
        spec["tokenizer"] = {"file": TOKENIZER_FILE, "max_length": identity.get("max_length")}
    return spec


def write_metadata(path: str | Path, metadata: dict[str, object]) -> None:
    """Set ``metadata_props`` of an ONNX file (values as JSON unless text), atomically."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    kept = {p.key: p.value for p in model.metadata_props if p.key not in metadata}
    del model.metadata_props[:]
    for key, value in {**kept, **metadata}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    replace_atomically(path, lambda tmp: onnx.save(model, str(tmp)), needed=model.ByteSize())


def model_card(summary: dict, export: dict, metadata: dict) -> str:
    """README.md of an export: what the student was distilled from, how, and what it measured."""
    roles = {name: summary.get(name, {}) for name in ("teacher", "scratch", "student")}
    headline = summary.get("task", {}).get("metrics", ["accuracy"])[0]
    percent = headline in summary.get("task", {}).get("percent", ["accuracy"])

    def score(entry):
        value = entry.get(headline)
        return "-" if value is None else (f"{100 * value:.2f}%" if percent else f"{value:.4f}")

    rows = []
    for name, entry in roles.items():
        if entry:
            ms = export.get("latency_ms", {}).get(name, {}).get("onnxruntime", {}).get("batch_1")
            rows.append(
                f"| {name} | {entry.get('model', '?')} | {score(entry)} | "
                f"{entry.get('params', 0):,} | {entry.get('bytes', 0):,} | "
                f"{'-' if ms is None else f'{ms:.3f}'} |"
            )
    files = export.get("files", {})
    listed = "\n".join(f"- `{Path(f['path']).name}` ({f['bytes']:,} bytes)" for f in files.values())
    columns = (
        f"| model | architecture | test {headline} | parameters | bytes (checkpoint) "
        "| ONNX Runtime ms, batch 1 |"
    )
    return f"""# {summary.get("name", "kdistill")}: distilled student

Distilled with kdistill from the teacher `{roles["teacher"].get("model", "?")}` into the student
`{roles["student"].get("model", "?")}`, method `{summary.get("method", "?")}`, teaching mode
`{summary.get("mode", "teacher")}`, task {summary.get("task", {}).get("name", "classification")}.
The scratch student is the same architecture trained without a teacher, on the same data.

{columns}
|---|---|---|---|---|---|
{chr(10).join(rows)}

Files:
{listed}

Every ONNX file carries `kdistill.classes` (class names) and `kdistill.preprocessing` (inputs,
shapes, normalisation) in its metadata:

```
classes: {json.dumps(metadata.get("kdistill.classes"))}
preprocessing: {json.dumps(metadata.get("kdistill.preprocessing"))}
```

{_how_to_run(summary, files)}
"""


def _how_to_run(summary: dict, files: dict) -> str:
    """The model card's last paragraph: ``kdistill predict`` for a classifier; for a language
    model, which predict does not score, its next-token logits over token ids."""
    if summary.get("task", {}).get("name") != "language_modelling":
        return (
            "Run it on files, with ONNX Runtime only: `kdistill predict <this folder> INPUT...` "
            "(images, a CSV\nof feature rows, or a text file of one input per line)."
        )
    hf = (
        "\n`hf_student/` loads with transformers' `AutoModelForCausalLM.from_pretrained`."
        if "hf_student" in files
        else ""
    )
    return (
        "A language model: each file maps token ids (batch × sequence, named above) to next-token "
        "logits\n(batch × sequence × vocabulary), to run with ONNX Runtime on the ids of the "
        f"run's tokenizer.{hf}\n`kdistill predict` does not score a language model."
    )


# --- predict ---------------------------------------------------------------------------------

# Bounds on what an export's metadata may ask predict to build: a shared export folder is data,
# and 60000×60000 RGB would be a 14 GB array before any model ran.
MAX_SIDE = 8192  # pixels per image side
MAX_VALUES = 2**24  # values in one sample (64 MB of float32)
MAX_PIXELS = 2**26  # pixels of an input image, checked before it is decoded
MAX_FIELD = 2**24  # characters in one CSV field (csv's own default is 131,072)


class InputSpec(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=1, le=MAX_VALUES)] | Literal["sequence"]] = Field(
        min_length=1
    )
    dtype: str = "float32"


class ImageSpec(BaseModel):
    mode: Literal["L", "RGB"]
    size: tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], Annotated[int, Field(ge=1, le=MAX_SIDE)]]


class TokenizerSpec(BaseModel):
    file: Annotated[str, Field(pattern=r"^[^/\\]+$")]  # a file beside the model, never a path
    max_length: Annotated[int, Field(ge=1, le=MAX_VALUES)] | None = None


class Standardisation(BaseModel):
    mean: float | list[float]
    std: float | list[float]


class Preprocessing(BaseModel):
    """``kdistill.preprocessing`` as predict reads it (the module's doc lists the fields)."""

    inputs: list[InputSpec] = Field(min_length=1)
    normalise: Standardisation | str | None = None  # a sentence where the data did it itself
    image: ImageSpec | None = None
    tokenizer: TokenizerSpec | None = None
    label: str | None = None  # the training label column of a table: not an input

    @model_validator(mode="after")
    def _consistent(self):
        for item in self.inputs:
            fixed = [n for n in item.shape if n != "sequence"]
            if np.prod(fixed, dtype=np.float64) > MAX_VALUES:
                raise ValueError(
                    f"input {item.name!r} of shape {item.shape} is over {MAX_VALUES:,} values"
                )
        if self.image is not None:
            channels = 1 if self.image.mode == "L" else 3
            if self.inputs[0].shape != [channels, *self.image.size]:
                raise ValueError(
                    f"image {self.image.mode} {self.image.size} does not match "
                    f"input shape {self.inputs[0].shape}"
                )
        return self


def load_export(export_dir: Path):
    """The student session of an export folder, its class names and its preprocessing."""
    from kdistill.deploy.onnx import ort_session, require_onnx

    file = export_dir / "student.onnx"
    if not file.is_file():
        raise UserError(
            f"{export_dir}: no student.onnx; pass the export "
            "folder `kdistill export` wrote (runs/<name>/export)"
        )
    require_onnx()  # a missing extra names its pip command, not "unreadable"
    try:
        session = ort_session(file)
        # Metadata that is not UTF-8 (a damaged file) fails here, as a UnicodeDecodeError.
        meta = session.get_modelmeta().custom_metadata_map
    except Exception as error:  # ONNX Runtime's own exception types derive from Exception only
        raise UserError(
            f"{file}: not a readable ONNX model ({_first_line(error)}); export the run again"
        ) from None
    again = "export the run again with this version of kdistill"
    if "kdistill.preprocessing" not in meta:
        raise UserError(f"{file}: no kdistill.preprocessing metadata; {again}")
    try:
        spec = Preprocessing.model_validate_json(meta["kdistill.preprocessing"])
        classes = json.loads(meta.get("kdistill.classes", "[]"))
    except (ValidationError, ValueError) as error:
        raise UserError(
            f"{file}: unusable kdistill metadata ({_first_line(error)}); {again}"
        ) from None
    if not isinstance(classes, list):
        raise UserError(f"{file}: kdistill.classes is not a list of class names; {again}")
    return session, [str(c) for c in classes], spec


def _first_line(error: Exception) -> str:
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'metadata'}: {first['msg']}"[:200]
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def read_inputs(
    paths: list[Path],
    spec: Preprocessing,
    export_dir: Path,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Names of the samples and the session's feed, from image files, CSV rows or text lines."""
    names, rows = [], []
    first = spec.inputs[0]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such input file")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            rows.append(_image(path, spec))
            names.append(path.name)
        elif suffix == ".csv" and "sequence" not in first.shape:
            for number, values in _csv_rows(path, first.shape, spec.label):
                rows.append(values)
                names.append(f"{path.name}:{number}")
        elif spec.tokenizer is not None:
            lines = [line for line in _text(path).splitlines() if line.strip()]
            rows.extend(lines)
            names.extend(f"{path.name}:{n}" for n in range(1, len(lines) + 1))
        elif first.name == "input_ids":  # token ids without a tokenizer: a language model
            raise UserError(
                f"{path}: this export is a language model (next-token logits over token ids), "
                "which kdistill predict does not score; run its .onnx with ONNX Runtime on the "
                "ids of its tokenizer (the run's data.options)"
            )
        else:
            takes = "images or a CSV" if spec.image else "a CSV"
            raise UserError(f"{path}: this model takes {takes} of feature rows")
    if not rows:
        raise UserError("no inputs found in the given files")
    if spec.tokenizer is not None:
        return names, _tokens(rows, spec, export_dir)
    x = np.stack(rows).astype(np.float32)
    if isinstance(spec.normalise, Standardisation):
        statistics = spec.normalise
        mean, std = (_per_channel(v, first.shape) for v in (statistics.mean, statistics.std))
        x = (x - mean) / std
    return names, {first.name: x.astype(np.float32)}


def _per_channel(values: float | list[float], shape: list) -> np.ndarray:
    """One statistic, or one per entry of the sample's first axis (an image channel, a table
    column), shaped to broadcast over the sample's other axes: (C, 1, 1) for an image."""
    values = np.asarray(values, dtype=np.float32)
    if values.size == 1:
        return values.reshape(())
    if values.size != shape[0]:
        raise UserError(
            f"the export's normalisation has {values.size} values for inputs of shape "
            f"{shape}; export the run again"
        )
    return values.reshape(-1, *[1] * (len(shape) - 1))


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def _image(path: Path, spec: Preprocessing) -> np.ndarray:
    if spec.image is None:
        raise UserError(f"{path}: this model does not take images")
    from PIL import Image

    height, width = spec.image.size
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:  # decided from the header, before decoding
                raise UserError(
                    f"{path}: {image.width}×{image.height} pixels, over the limit of "
                    f"{MAX_PIXELS:,}; resize it"
                )
        # The training data's own reader: 16-bit and float pixels scaled, not clipped to white.
        pixels = read_image(path, spec.image.mode, (width, height))
    except Image.DecompressionBombError:
        raise UserError(
            f"{path}: declares more pixels than an image may have "
            "(a decompression bomb?); resize it"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UserError(f"{path}: not a readable image ({type(error).__name__})") from None
    return pixels.reshape(spec.inputs[0].shape) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _csv_rows(path: Path, shape: list, label: str | None) -> list[tuple[int, np.ndarray]]:
    """``(line, values)`` of each row; a first line that is not numbers is a header."""
    size = int(np.prod(shape))
    out = []
    limit = csv.field_size_limit(MAX_FIELD)  # process-wide: given back below
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for record, row in enumerate(reader):
                number = reader.line_num  # the file's line, after quoted newlines too
                try:
                    cells = [float(v) for v in row if v.strip() != ""]
                    values = np.asarray(cells, dtype=np.float32)
                except ValueError:
                    if record > 0:
                        raise UserError(f"{path}: line {number} is not all numbers") from None
                    if label is not None and label in (cell.strip() for cell in row):
                        raise UserError(
                            f"{path}: drop column {label!r}, the label the model was "
                            f"trained to predict; each line holds the {size} feature "
                            "values only"
                        ) from None
                    continue  # a header
                if not np.isfinite(values).all():
                    raise UserError(
                        f"{path}: line {number} holds a value that is not a finite number"
                    )
                if values.size != size:
                    raise UserError(
                        f"{path}: line {number} has {values.size} values; the model "
                        f"takes {size} ({'×'.join(map(str, shape))})"
                    )
                out.append((number, values.reshape(shape)))
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not UTF-8 text (byte {error.start}); save the CSV as UTF-8"
        ) from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None
    finally:
        csv.field_size_limit(limit)
    return out


def _tokens(lines: list[str], spec: Preprocessing, export_dir: Path) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(export_dir / spec.tokenizer.file))
    except Exception as error:  # tokenizers raises its own Exception subclass
        file = export_dir / spec.tokenizer.file
        raise UserError(f"{file}: not a readable tokenizer ({_first_line(error)})") from None
    if spec.tokenizer.max_length:
        tokenizer.enable_truncation(max_length=spec.tokenizer.max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
    encodings = tokenizer.encode_batch(lines)
    feed = {
        "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
    }
    return {item.name: feed[item.name] for item in spec.inputs if item.name in feed}


def predict_files(export_dir: str | Path, paths: list[str | Path]) -> list[dict]:
    """Run the exported student on files; one ``{input, class, index, probability}`` each."""
    export_dir = Path(export_dir)
    session, classes, spec = load_export(export_dir)
    names, feed = read_inputs([Path(p) for p in paths], spec, export_dir)
    try:
        logits = session.run(None, feed)[0]
    except Exception as error:  # ONNX Runtime's own types: inputs the graph does not take
        raise UserError(
            f"{export_dir / 'student.onnx'}: the model refused the inputs ({_first_line(error)})"
        ) from None
    if logits.ndim != 2:
        raise UserError("predict shows classes: this export scores tokens (a language model)")
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    results = []
    for name, row in zip(names, probabilities):
        index = int(row.argmax())
        label = classes[index] if index < len(classes) else str(index)
        results.append(
            {"input": name, "class": label, "index": index, "probability": float(row[index])}
        )
    return results
