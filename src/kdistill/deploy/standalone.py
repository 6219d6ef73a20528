"""Exports that stand alone: what a deployed ONNX file must carry to be used without kdistill's
training code, a model card beside it, and ``kdistill predict`` to show it works.

Each exported file carries, in its ONNX ``metadata_props``:
- ``kdistill.classes``: the class names, JSON, in output order;
- ``kdistill.preprocessing``: JSON with every input's name, per-sample shape and dtype
  (``"sequence"`` where the length is dynamic), the standardisation applied after loading
  (``x = (x - mean) / std``), how an image becomes the input, and the tokenizer file of a
  text model (copied beside the ONNX files);
- ``kdistill.recipe`` and ``kdistill.test``: the recipe's name and the measured test score.

``predict`` needs only onnxruntime and NumPy (Pillow for images, ``tokenizers`` for text).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kdistill.errors import UserError

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
        inputs.append({"name": name, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")})
    spec = {"inputs": inputs, "normalise": identity.get("normalise")}
    first = tensors[0]
    if first.is_floating_point() and first.dim() == 3 and first.shape[0] in (1, 3):
        spec["image"] = {
            "mode": "L" if first.shape[0] == 1 else "RGB", "size": list(first.shape[1:]),
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
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.meta.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


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
            rows.append(f"| {name} | {entry.get('model', '?')} | {score(entry)} | {entry.get('params', 0):,} | "
                        f"{entry.get('bytes', 0):,} | {'-' if ms is None else f'{ms:.3f}'} |")
    files = export.get("files", {})
    listed = "\n".join(f"- `{Path(f['path']).name}` ({f['bytes']:,} bytes)" for f in files.values())
    return f"""# {summary.get('name', 'kdistill')}: distilled student

Distilled with kdistill from the teacher `{roles['teacher'].get('model', '?')}` into the student
`{roles['student'].get('model', '?')}`, method `{summary.get('method', '?')}`, teaching mode
`{summary.get('mode', 'teacher')}`, task {summary.get('task', {}).get('name', 'classification')}.
The scratch student is the same architecture trained without a teacher, on the same data.

| model | architecture | test {headline} | parameters | bytes (checkpoint) | ONNX Runtime ms, batch 1 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Files:
{listed}

Every ONNX file carries `kdistill.classes` (class names) and `kdistill.preprocessing` (inputs,
shapes, normalisation) in its metadata:

```
classes: {json.dumps(metadata.get('kdistill.classes'))}
preprocessing: {json.dumps(metadata.get('kdistill.preprocessing'))}
```

Run it on files, with ONNX Runtime only: `kdistill predict <this folder> INPUT...` (images, a CSV
of feature rows, or a text file of one input per line).
"""


# --- predict ---------------------------------------------------------------------------------


def load_export(export_dir: Path):
    """The student session of an export folder and its metadata."""
    from kdistill.deploy.onnx import ort_session

    file = export_dir / "student.onnx"
    if not file.is_file():
        raise UserError(f"{export_dir}: no student.onnx; pass the export folder `kdistill export` wrote (runs/<name>/export)")
    session = ort_session(file)
    meta = session.get_modelmeta().custom_metadata_map
    if "kdistill.preprocessing" not in meta:
        raise UserError(f"{file}: no kdistill.preprocessing metadata; export it again with this version of kdistill")
    return session, json.loads(meta.get("kdistill.classes", "[]")), json.loads(meta["kdistill.preprocessing"])


def read_inputs(paths: list[Path], spec: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """Names of the samples and the session's feed, from image files, CSV rows or text lines."""
    names, rows = [], []
    first = spec["inputs"][0]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such input file")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            rows.append(_image(path, spec))
            names.append(path.name)
        elif suffix == ".csv":
            for number, values in enumerate(_csv_rows(path, first["shape"]), 1):
                rows.append(values)
                names.append(f"{path.name}:{number}")
        elif "tokenizer" in spec:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            rows.extend(lines)
            names.extend(f"{path.name}:{n}" for n in range(1, len(lines) + 1))
        else:
            raise UserError(f"{path}: this model takes {'images or ' if 'image' in spec else ''}a CSV of feature rows")
    if not rows:
        raise UserError("no inputs found in the given files")
    if "tokenizer" in spec:
        return names, _tokens(rows, spec)
    x = np.stack(rows).astype(np.float32)
    if spec.get("normalise"):
        x = (x - spec["normalise"]["mean"]) / spec["normalise"]["std"]
    return names, {first["name"]: x.astype(np.float32)}


def _image(path: Path, spec: dict) -> np.ndarray:
    if "image" not in spec:
        raise UserError(f"{path}: this model does not take images")
    from PIL import Image

    image_spec, shape = spec["image"], spec["inputs"][0]["shape"]
    try:
        with Image.open(path) as image:
            height, width = image_spec["size"]
            pixels = np.asarray(image.convert(image_spec["mode"]).resize((width, height)), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UserError(f"{path}: not a readable image ({type(error).__name__})") from None
    return pixels.reshape(shape) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _csv_rows(path: Path, shape: list) -> list[np.ndarray]:
    size = int(np.prod(shape))
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            try:
                values = np.asarray([float(v) for v in row if v.strip() != ""], dtype=np.float32)
            except ValueError:
                if number == 1:
                    continue  # a header
                raise UserError(f"{path}: line {number} is not all numbers") from None
            if values.size != size:
                raise UserError(f"{path}: line {number} has {values.size} values; the model takes {size} ({'×'.join(map(str, shape))})")
            out.append(values.reshape(shape))
    return out


def _tokens(lines: list[str], spec: dict) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec["_dir"] / spec["tokenizer"]["file"]))
    limit = spec["tokenizer"].get("max_length")
    if limit:
        tokenizer.enable_truncation(max_length=limit)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
    encodings = tokenizer.encode_batch(lines)
    feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}
    return {item["name"]: feed[item["name"]] for item in spec["inputs"] if item["name"] in feed}


def predict_files(export_dir: str | Path, paths: list[str | Path]) -> list[dict]:
    """Run the exported student on files; one ``{input, class, index, probability}`` each."""
    export_dir = Path(export_dir)
    session, classes, spec = load_export(export_dir)
    spec["_dir"] = export_dir
    names, feed = read_inputs([Path(p) for p in paths], spec)
    logits = session.run(None, feed)[0]
    if logits.ndim != 2:
        raise UserError("predict shows classes: this export scores tokens (a language model)")
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    results = []
    for name, row in zip(names, probabilities):
        index = int(row.argmax())
        label = classes[index] if index < len(classes) else str(index)
        results.append({"input": name, "class": label, "index": index, "probability": float(row[index])})
    return results
