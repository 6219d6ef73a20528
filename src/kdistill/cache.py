"""Teacher-output cache: run the teacher once over the training split, store its logits (and
tapped features) in memory-mapped arrays keyed by sample index, and let training read them
instead of running the teacher.

A fingerprint (teacher weights digest, data identity and split, augmentation, taps, dtype) is
stored with the cache and any mismatch is refused: reusing outputs of another teacher or of
other inputs would silently train on the wrong targets. With random augmentation the cache
holds one *view* per epoch, made by the same replayable augmentation the student sees (the
"fast knowledge distillation" idea, Shen & Xing, ECCV 2022, arXiv:2112.01528), so training
replays exactly what was cached. Under torchrun each rank computes its own shard of the samples.

For large vocabularies the logits can be stored sparsely (``topk``): per position the log-
probabilities of the teacher's k most probable classes, their indices, and the log of the
probability mass left over (the tail). Read back, the tail is spread evenly over the other
classes, so the distribution sums to one, its top-k part is exact, and softmax(·/T) keeps the
ratios between the top-k classes at any temperature: the "sparse logits" of cached LM
distillation (e.g. Raman et al., "For Distillation, Tokens Are Not All You Need", 2023, and
the top-k caches of MiniPLM / Gemma-style pre-training distillation). The three arrays are the
fields of ``kdistill.losses.token.SparseTeacher``; the token losses can instead compare the k
top tokens and one tail bucket exactly (``topk_teacher``), while the dense read-back here serves
every loss, logit-level ones included.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdistill.checkpoint import CheckpointError
from kdistill.distiller import ModelOutput, Teacher
from kdistill.errors import UserError
from kdistill.losses.token import topk_teacher

FORMAT = "kdistill-teacher-cache/1"
DTYPES = {"float16": np.float16, "float32": np.float32}
# log-probability given to tail classes when the teacher leaves no mass outside its top k:
# e^-60 ≈ 1e-26, nothing to any loss, but finite, so 0·log 0 never turns into a NaN.
TAIL_FLOOR = -60.0


class CacheMismatchError(UserError):
    """A cache made for another teacher, data, augmentation, taps or dtype."""


def _array_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_difference(stored: dict, wanted: dict) -> str:
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            return key
    return "?"


def _arrays(output: ModelOutput, topk: int | None = None) -> dict[str, Tensor]:
    features = {f"feature.{k}": v for k, v in output.features.items()}
    if topk is None:
        return {"logits": output.logits, **features}
    sparse = topk_teacher(output.logits.float(), min(topk, output.logits.shape[-1]))
    return {
        "topk.log_probs": sparse.log_probs, "topk.index": sparse.indices,
        "topk.tail": sparse.tail_log_prob.unsqueeze(-1), **features,
    }


def _dense_log_probs(top_log_probs: Tensor, index: Tensor, tail: Tensor, classes: int) -> Tensor:
    """The full (…, classes) log-distribution of a top-k entry: exact on the k stored classes,
    the tail mass shared evenly by the others (a floor keeps log 0 out of the losses)."""
    others = classes - index.shape[-1]
    if others == 0:
        return torch.zeros(*index.shape[:-1], classes).scatter(-1, index, top_log_probs)
    fill = (tail - math.log(others)).clamp_min(TAIL_FLOOR)
    dense = fill.expand(*index.shape[:-1], classes).clone()
    return dense.scatter(-1, index, top_log_probs)


class TeacherCache:
    """A built cache, opened read-only; ``lookup`` returns the outputs of samples by index."""

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{self.root}: no teacher cache here (meta.json missing); build it with `kdistill cache RECIPE`")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise CheckpointError(f"{meta_path}: corrupted cache metadata; delete {self.root} and build it again") from None
        if self.meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.root}: not a kdistill teacher cache")
        self.arrays: dict[str, np.ndarray] = {}
        for name, info in self.meta["arrays"].items():
            path = self.root / info["file"]
            size = path.stat().st_size if path.is_file() else -1
            if size != info["bytes"]:
                raise CheckpointError(f"{path}: teacher cache is truncated or missing ({size} of {info['bytes']} bytes); delete {self.root} and build it again")
            if verify and _array_digest(path) != info["sha256"]:
                raise CheckpointError(f"{path}: teacher cache is corrupted (checksum mismatch); delete {self.root} and build it again")
            self.arrays[name] = np.load(path, mmap_mode="r")

    @property
    def fingerprint(self) -> dict:
        return self.meta["fingerprint"]

    @property
    def views(self) -> int:
        return self.meta["views"]

    def check(self, fingerprint: dict) -> None:
        """Refuse to serve a run whose teacher, data, augmentation, taps or dtype differ."""
        if self.fingerprint != fingerprint:
            field = _first_difference(self.fingerprint, fingerprint)
            raise CacheMismatchError(
                f"{self.root}: the teacher cache was built for another {field} "
                f"({self.fingerprint.get(field)!r}, this run has {fingerprint.get(field)!r}); "
                "rebuild it with `kdistill cache RECIPE` or set teacher.cache=false"
            )

    def lookup(self, index: Tensor, view: int = 0) -> ModelOutput:
        """Outputs of the samples at ``index`` (positions in the training split) in ``view``."""
        rows = index.cpu().numpy()
        values = {
            name: torch.from_numpy(np.ascontiguousarray(array[view % len(array)][rows]))
            for name, array in self.arrays.items()
        }
        values = {k: v if k == "topk.index" else v.float() for k, v in values.items()}
        if "logits" in values:
            logits = values.pop("logits")
        else:  # sparse: log-probabilities are logits (softmax of log p is p)
            logits = _dense_log_probs(
                values.pop("topk.log_probs"), values.pop("topk.index").long(),
                values.pop("topk.tail"), self.meta["topk"]["classes"],
            )
        return ModelOutput(logits, {k.removeprefix("feature."): v for k, v in values.items()})


MARKER = ".kdistill-cache"  # written first into a directory this code made for a cache


def check_cache_root(root: Path) -> None:
    """Refuse a ``teacher.cache_dir`` that kdistill may not write into: one that holds files a
    cache build did not write (a user's directory is never emptied), or a file."""
    if root.exists() and not root.is_dir():
        raise UserError(f"teacher.cache_dir: {root} is a file, not a directory")
    if not root.is_dir() or not any(root.iterdir()) or (root / "meta.json").is_file():
        return
    if not (root / MARKER).is_file():
        raise UserError(
            f"teacher.cache_dir: {root} already holds files that are not a kdistill teacher cache; "
            "point it at a new or empty directory"
        )
    strangers = [p.name for p in root.iterdir() if p.name not in (MARKER, "meta.json.tmp") and not p.name.endswith(".npy")]
    if strangers:
        raise UserError(
            f"teacher.cache_dir: {root} holds {strangers[0]!r}, which a cache build did not write; "
            "point teacher.cache_dir at a new or empty directory"
        )


def _claim(root: Path) -> None:
    """Make ``root`` ready for a new cache without ever deleting what kdistill did not write: a
    missing or empty directory is taken (and marked); an unfinished cache of ours (marked, no
    ``meta.json``) is emptied of its own files; anything else is refused."""
    check_cache_root(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.name != MARKER:
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("teacher cache written by kdistill\n")


def build_cache(
    root: str | Path,
    teacher: Teacher,
    dataset: Dataset,
    *,
    fingerprint: dict,
    views: int = 1,
    dtype: str = "float16",
    batch_size: int = 256,
    accelerator=None,
    topk: int | None = None,
) -> TeacherCache:
    """Run ``teacher`` over every sample of ``dataset`` (``views`` times, each with the
    dataset's ``set_epoch(view + 1)`` augmentation) and store the outputs under ``root``;
    with ``topk``, the logits as the k most probable classes plus the tail mass.

    Written as ``.npy`` files that every rank fills with its own shard; the metadata with the
    checksums is written last, so an interrupted build is never mistaken for a cache.
    """
    root = Path(root)
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    main = rank == 0
    device = accelerator.device if accelerator else torch.device("cpu")
    teacher.to(device)
    count = len(dataset)
    if main:
        _claim(root)
    shard = Subset(dataset, list(range(rank, count, world)))  # strided: balanced across ranks

    def batches():
        return DataLoader(shard, batch_size=batch_size)

    # Shapes from one sample, then every rank opens the same preallocated files.
    probe = teacher({k: v.to(device) if isinstance(v, Tensor) else v for k, v in next(iter(DataLoader(dataset, batch_size=1))).items()})
    shapes = {name: tuple(value.shape[1:]) for name, value in _arrays(probe, topk).items()}
    files = {name: root / f"{name}.npy" for name in shapes}
    # Class indices as integers (float16 is exact only up to 2,048); values in ``dtype``.
    dtypes = {name: np.int32 if name == "topk.index" else DTYPES[dtype] for name in shapes}
    if main:
        for name, shape in shapes.items():
            np.lib.format.open_memmap(files[name], mode="w+", dtype=dtypes[name], shape=(views, count, *shape)).flush()
    if accelerator:
        accelerator.wait_for_everyone()
    arrays = {name: np.load(files[name], mmap_mode="r+") for name in shapes}
    for view in range(views):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(view + 1)  # the same view training epoch view+1 will draw
        for batch in batches():
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            output = _arrays(teacher(batch), topk)
            rows = batch["index"].cpu().numpy()
            for name, value in output.items():
                arrays[name][view, rows] = value.cpu().numpy().astype(dtypes[name])
    for array in arrays.values():
        array.flush()
    del arrays
    if accelerator:
        accelerator.wait_for_everyone()
    if main:
        meta = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "views": views,
            "samples": count,
            "topk": None if topk is None else {"k": topk, "classes": probe.logits.shape[-1]},
            "arrays": {
                name: {"file": path.name, "shape": [views, count, *shapes[name]], "dtype": np.dtype(dtypes[name]).name,
                       "bytes": path.stat().st_size, "sha256": _array_digest(path)}
                for name, path in files.items()
            },
        }
        tmp = root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(root / "meta.json")
    if accelerator:
        accelerator.wait_for_everyone()
    return TeacherCache(root, verify=False)


class CachedTeacher:
    """Reads the teacher's outputs from a ``TeacherCache``: called like a ``Teacher``, returning
    the same ``ModelOutput``, with no teacher model in memory at all."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache
        self.epoch = 1
        self.device = torch.device("cpu")
        self.module = None

    @property
    def taps(self) -> list[str]:
        return [k.removeprefix("feature.") for k in self.cache.arrays if k.startswith("feature.")]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def to(self, device) -> CachedTeacher:
        self.device = torch.device(device)
        return self

    def __call__(self, batch) -> ModelOutput:
        output = self.cache.lookup(batch["index"], view=self.epoch - 1)
        return ModelOutput(
            output.logits.to(self.device, non_blocking=True),
            {k: v.to(self.device, non_blocking=True) for k, v in output.features.items()},
        )
