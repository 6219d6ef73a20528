"""Teacher-output cache: run the teacher once over the training split, store its logits (and
tapped features) in memory-mapped arrays keyed by sample index, and let training read them
instead of running the teacher.

A fingerprint (the teacher's identity, data identity and split, augmentation, taps, dtype, the
precision the teacher runs in) is stored with the cache and any mismatch is refused: reusing
outputs of another teacher or of other inputs would silently train on the wrong targets. The
teacher's identity (``kdistill.teachers.identity``) covers everything that changes what it
outputs: its parameters and every buffer (an ensemble's weights are not in its
``state_dict``), the settings of each module (an ensemble's ``combine``), and the forward
hooks on it, with the tensors and values they hold (a ``vocab_map`` restricts the logits
through a hook). What a fingerprint cannot see (a hook that reads a global) the probe
catches: a cache opened with the live teacher at hand is compared with it on a few samples
(``TeacherCache.verify``). With random augmentation the cache
holds one *view* per epoch, made by the same replayable augmentation the student sees (the
"fast knowledge distillation" idea, Shen & Xing, ECCV 2022, arXiv:2112.01528), so training
replays exactly what was cached. Under torchrun each rank computes its own shard of the samples.

For large vocabularies the logits can be stored sparsely (``topk``): per position the
teacher's k most probable classes, their log-probabilities and the log of the mass left over
(the tail), all of softmax(t / T) at the one temperature T the run's terms use, which meta.json
records (``topk: {k, classes, temperature}``). That is what makes the softened target exact on
the top k: the tail's share at T cannot be recovered from the probabilities at T = 1 (spreading
it evenly is exact only at T = 1). Read back, they are a ``kdistill.losses.token.SparseTeacher``
(shipped to the device as the three (…, k) arrays, never expanded to (…, V)), and each term uses
the exact top-k + tail-bucket form of its loss (``topk_terms``); a loss that has none (dkd,
dist, nkd: they need the full distribution) is refused. The "sparse logits" of cached LM
distillation: Raman et al., "For Distillation, Tokens Are Not All You Need", 2023, and the
top-k caches of MiniPLM / Gemma-style pre-training distillation.

Or as tokens drawn from the teacher (``samples``): per position K draws from softmax(t / T)
(or a flatter proposal, ``proposal_temperature``), each distinct token kept once with its
importance weight and log-probability (``kdistill.losses.sparse.sampled_teacher``): random-
sampling KD (Anshumann et al., ACL 2025, arXiv:2503.16870), an unbiased estimate of the forward
KL and its gradient where a top-k cache is biased. The draws are seeded per sample and view
(``seed``), so a build is reproducible whatever the batch size or the number of ranks. Read
back, they are a ``SampledTeacher``; the forward KL and JSD below β = 1 take one
(``sampled_terms``).

Or, for a language model whose logits are ``lm_head(h)``, as its final hidden states h
(``hidden``): H numbers per position instead of V, and the head written once beside them
(``head.safetensors``, its checksum in meta.json). Read back, they are ``LazyLogits``: the exact
logits, which any loss reads as it reads the live teacher's (a chunked loss a few positions at a
time), at the cost of the head's product in every step (``kdistill.teachers.signals``).

meta.json records the signal a cache holds (``signal``: kind dense, topk, sampled or hidden, with
k or the samples, the temperature, the proposal's temperature and the seed); opening a cache for
another signal is refused (``TeacherCache.check_signal``).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from kdistill.data.base import collate
from kdistill.distiller import ModelOutput, Teacher
from kdistill.errors import UserError, first_difference
from kdistill.io.files import file_sha256
from kdistill.io.tensors import (
    CheckpointError,
    load_tensors,
    save_tensors,
    stored_digest,
)
from kdistill.losses.sparse import SPARSE_TEACHERS, SampledTeacher, SparseTeacher
from kdistill.modeling import LazyLogits, to_device
from kdistill.teachers.identity import precision_of
from kdistill.teachers.signals import describe, head_of, signal_arrays, signal_of
from kdistill.teachers.store import (
    HEAD,
    agree_on_cache,
    allocate,
    check_space,
    claim,
    everyone_sees_main_root,
    one_machine,
    padded_shard,
)
from kdistill.training.host_memory import keep_freed_memory
from kdistill.training.memory_format import channels_last

FORMAT = "kdistill-teacher-cache/1"
DTYPES = {"float16": np.float16, "float32": np.float32}


class CacheMismatchError(UserError):
    """A cache made for another teacher, data, augmentation, taps or dtype."""


# How far a cached value may sit from the live teacher's before the probe refuses the cache:
# float16 storage rounds to 2^-11 relative (~0.008 at a logit of 16), and a teacher run on
# another device or batch size differs by ~1e-5. Outputs of another teacher or another
# vocabulary map differ by tenths.
PROBE_TOLERANCE = 1e-2
# A teacher run in half precision gives outputs that move with the batch they ran in: SmolLM2's
# logits (up to 36) moved by up to 0.84 at bf16 between batches of 4 and 16, as much as a 1 %
# change of its last norm. There the probe catches another teacher or setup (another model is
# 45 off), not a small change: differences are allowed up to this share of the largest value.
HALF_PROBE_TOLERANCE = 5e-2


def _first_difference(stored: dict, wanted: dict) -> str:
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            return key
    return "?"


class TeacherCache:
    """A built cache, opened read-only; ``lookup`` returns the outputs of samples by index."""

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise CheckpointError(
                f"{self.root}: no teacher cache here (meta.json "
                "missing); build it with `kdistill cache RECIPE`"
            )
        try:
            self.meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):  # unreadable, not JSON, not UTF-8
            raise CheckpointError(
                f"{meta_path}: corrupted cache metadata; delete {self.root} and build it again"
            ) from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.root}: not a kdistill teacher cache")
        # Every field a reader uses, as build_cache writes it: an edited file is refused here, not
        # mid-run.
        try:
            (
                self.meta["fingerprint"].items(),
                int(self.meta["views"]) + int(self.meta["samples"]),
                self.meta["topk"] is None or self.meta["topk"]["k"],
                self.meta.get("signal", {"kind": "dense"})["kind"],
            )
            [
                (str(info["file"]), int(info["bytes"]), str(info["sha256"]))
                for info in self.meta["arrays"].values()
            ]
        except (KeyError, TypeError, AttributeError, ValueError):
            raise CheckpointError(
                f"{meta_path}: cache metadata lacks fields or has the wrong types; delete "
                f"{self.root} and build it again"
            ) from None
        self.arrays: dict[str, np.ndarray] = {}
        for name, info in self.meta["arrays"].items():
            path = self.root / info["file"]
            size = path.stat().st_size if path.is_file() else -1
            if size != info["bytes"]:
                raise CheckpointError(
                    f"{path}: teacher cache is truncated or missing ({size} of {info['bytes']} "
                    f"bytes); delete {self.root} and build it again"
                )
            if verify and file_sha256(path) != info["sha256"]:
                raise CheckpointError(
                    f"{path}: teacher cache is corrupted (checksum "
                    f"mismatch); delete {self.root} and build it again"
                )
            self.arrays[name] = np.load(path, mmap_mode="r")
        self.head = self._head(verify) if self.signal["kind"] == "hidden" else None

    def _head(self, verify: bool) -> dict[str, Tensor]:
        """A hidden-state cache's output layer: the digest in its header must be the one
        meta.json holds (this cache's head, not another's), and its tensors must match it
        (``load_tensors`` checks them: one pass over the file, whatever ``verify``)."""
        path, info = self.root / HEAD, self.meta.get("head")
        if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
            raise CheckpointError(
                f"{self.root / 'meta.json'}: a hidden-state cache without its head's checksum; "
                f"delete {self.root} and build it again"
            )
        try:
            if path.is_file() and stored_digest(path) == info["digest"]:
                return load_tensors(path, what="teacher cache head", expect_digest=True)[0]
        except CheckpointError:  # unreadable, or its tensors do not match its digest
            pass
        raise CheckpointError(
            f"{path}: the teacher cache's head is missing or corrupted; delete {self.root} and "
            "build it again"
        )

    @property
    def fingerprint(self) -> dict:
        return self.meta["fingerprint"]

    @property
    def views(self) -> int:
        return self.meta["views"]

    @property
    def signal(self) -> dict:
        """What it holds (``signal_of``); a cache from before meta.json recorded it is dense or
        top-k."""
        if "signal" in self.meta:
            return self.meta["signal"]
        topk = self.meta["topk"]
        if topk is None:
            return signal_of()
        return {**signal_of(topk["k"], temperature=topk["temperature"]), "classes": topk["classes"]}

    def check_signal(self, wanted: dict) -> None:
        """Refuse to serve a run that asks for another signal (top-k at another k, sampled
        tokens, another temperature or seed, dense logits) than the cache holds; ``wanted`` as
        ``signal_of`` gives it (the vocabulary size V, ``classes``, is the cache's own)."""
        held = {k: v for k, v in self.signal.items() if k != "classes"}
        if held != wanted:
            raise CacheMismatchError(
                f"{self.root}: the teacher cache holds {describe(self.signal)}, but this run "
                f"asks for {describe(wanted)}; delete it and rebuild it (`kdistill cache "
                "RECIPE`), or point teacher.cache_dir elsewhere"
            )

    def check(self, fingerprint: dict) -> None:
        """Refuse to serve a run whose teacher, data, augmentation, taps or dtype differ."""
        if self.fingerprint != fingerprint:
            # The section that differs (teacher, data, augment, taps...), shown whole.
            field = first_difference(self.fingerprint, fingerprint).split(".")[0]
            raise CacheMismatchError(
                f"{self.root}: the teacher cache was built for another {field} "
                f"({self.fingerprint.get(field)!r}, this run has {fingerprint.get(field)!r}); "
                "rebuild it with `kdistill cache RECIPE` or set teacher.cache=false"
            )

    def lookup(self, index: Tensor, view: int = 0) -> ModelOutput:
        """Outputs of the samples at ``index`` (positions in the training split) in ``view``:
        logits, a ``SparseTeacher`` (top-k cache), a ``SampledTeacher`` or ``LazyLogits``
        (hidden states and the head), on the CPU."""
        rows = index.cpu().numpy()
        values = {
            name: torch.from_numpy(np.ascontiguousarray(array[view % len(array)][rows]))
            for name, array in self.arrays.items()
        }
        values = {k: v if k.endswith(".index") else v.float() for k, v in values.items()}
        if "logits" in values:
            logits = values.pop("logits")
        elif "hidden" in values:
            logits = LazyLogits(values.pop("hidden"), self.head["weight"], self.head.get("bias"))
        elif "sampled.index" in values:
            signal = self.signal
            logits = SampledTeacher(
                values.pop("sampled.index"),
                values.pop("sampled.weight"),
                values.pop("sampled.log_prob"),
                temperature=signal["temperature"],
                vocab_size=signal["classes"],
            )
        else:
            topk = self.meta["topk"]
            logits = SparseTeacher(
                values.pop("topk.index"),
                values.pop("topk.log_probs"),
                values.pop("topk.tail").squeeze(-1),
                temperature=topk["temperature"],
                vocab_size=topk["classes"],
            )
        return ModelOutput(logits, {k.removeprefix("feature."): v for k, v in values.items()})

    def verify(
        self, teacher: Teacher, dataset: Dataset, *, samples: int = 4, accelerator=None
    ) -> None:
        """Compare the cached outputs of ``samples`` samples (spread over ``dataset``, the
        training split as the cache saw it) with the live ``teacher``'s, run in
        ``accelerator``'s precision as the build ran it; refuse the cache with one
        ``CacheMismatchError`` when they differ."""
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(1)  # view 0 holds epoch 1's inputs
        count = len(dataset)
        rows = sorted({i * (count - 1) // max(samples - 1, 1) for i in range(min(samples, count))})
        batch = default_collate([dataset[i] for i in rows])
        device = next(iter(teacher.module.parameters()), torch.empty(0)).device
        with accelerator.autocast() if accelerator else contextlib.nullcontext():
            live = teacher(to_device(batch, device))
        half = bool(precision_of(accelerator))  # the fingerprint's precision: bf16 or fp16
        cached = self.lookup(batch["index"])
        pairs = {
            f"features {name}": (cached.features[name], value.float().cpu())
            for name, value in live.features.items()
            if name in cached.features
        }
        live_logits = live.logits
        if isinstance(live_logits, LazyLogits):
            live_logits = live_logits.materialize()
        live_logits = live_logits.float().cpu()
        if isinstance(cached.logits, LazyLogits):  # the logits the head gives back
            pairs["logits"] = (cached.logits.materialize(), live_logits)
        elif isinstance(cached.logits, SparseTeacher):  # the live distribution at the cached ids
            sparse = cached.logits
            log_p = torch.log_softmax(live_logits / sparse.temperature, dim=-1)
            index = sparse.indices.long().clamp(0, log_p.shape[-1] - 1)
            tail = torch.logsumexp(log_p.scatter(-1, index, float("-inf")), dim=-1)
            pairs["top-k log-probabilities"] = (sparse.log_probs, log_p.gather(-1, index))
            pairs["tail mass"] = (sparse.tail_log_prob.exp(), tail.exp())
        elif isinstance(cached.logits, SampledTeacher):  # the live log-probabilities there
            sparse = cached.logits
            log_p = torch.log_softmax(live_logits / sparse.temperature, dim=-1)
            index = sparse.indices.long().clamp(0, log_p.shape[-1] - 1)
            pairs["sampled log-probabilities"] = (sparse.log_probs, log_p.gather(-1, index))
        else:
            pairs["logits"] = (cached.logits, live_logits)
        for what, (stored, now) in pairs.items():
            if stored.shape != now.shape:
                difference = f"shape {tuple(stored.shape)} cached, {tuple(now.shape)} live"
            elif half and (stored - now).abs().max() <= HALF_PROBE_TOLERANCE * now.abs().max():
                continue
            elif not half and torch.allclose(
                stored, now, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE
            ):
                continue
            else:
                difference = (
                    f"up to {(stored - now).abs().nan_to_num(posinf=1e30).max().item():.3g} apart"
                )
            raise CacheMismatchError(
                f"{self.root}: the cached teacher {what} of "
                f"samples {rows} differ from the live teacher's "
                f"({difference}): the cache was made by another "
                "teacher or teacher setup; delete it and rebuild it "
                "with `kdistill cache RECIPE`, or set teacher.cache=false"
            )


def open_or_build(
    root: Path, teacher: Teacher, dataset: Dataset, *, fingerprint: dict, **build
) -> tuple[TeacherCache, bool]:
    """The teacher's cache at ``root``: opened and checked when it exists (the fingerprint, then
    the stored outputs against the live teacher: what a fingerprint cannot see), else built with
    ``build_cache``'s settings ``build``. Both doors open a cache here; returns it and whether it
    was built now."""
    if (root / "meta.json").is_file():
        cache = TeacherCache(root)
        cache.check(fingerprint)
        wanted = signal_of(
            build.get("topk"),
            build.get("samples"),
            hidden=build.get("hidden", False),
            **{
                k: build[k]
                for k in ("temperature", "proposal_temperature", "seed")
                if k in build and build[k] is not None
            },
        )
        cache.check_signal(wanted)
        cache.verify(teacher, dataset, accelerator=build.get("accelerator"))
        return cache, False
    return build_cache(root, teacher, dataset, fingerprint=fingerprint, **build), True


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
    temperature: float = 1.0,
    samples: int | None = None,
    proposal_temperature: float = 1.0,
    seed: int = 0,
    hidden: bool = False,
) -> TeacherCache:
    """Run ``teacher`` over every sample of ``dataset`` (``views`` times, each with the
    dataset's ``set_epoch(view + 1)`` augmentation) and store the outputs under ``root``;
    with ``topk``, the logits as the k most probable classes plus the tail mass of
    softmax(t / ``temperature``); with ``samples``, as that many tokens drawn from it (from
    softmax(t / (``temperature`` · ``proposal_temperature``))) with their importance weights,
    seeded by ``seed``, the sample and the view; with ``hidden``, a language model's final
    hidden states, and its head once.

    Written as ``.npy`` files that every rank fills with its own shard (or, across machines
    without a shared filesystem, one complete copy per machine: ``kdistill.teachers.store``); the
    metadata with the checksums is written last, so an interrupted build is never mistaken for
    a cache.
    """
    root = Path(root)
    device = accelerator.device if accelerator else torch.device("cpu")
    signal = signal_of(
        topk,
        samples,
        hidden=hidden,
        temperature=temperature,
        proposal_temperature=proposal_temperature,
        seed=seed,
    )
    teacher.to(device)
    # A hidden-state cache stores what the head reads: the teacher's LazyLogits (a teacher that
    # cannot give them is refused by signal_arrays, naming the setting).
    lazy = getattr(teacher, "lazy_logits", False)
    if hidden:
        teacher.lazy_logits = True
    try:
        return _build(
            root, teacher, dataset, accelerator, signal, fingerprint, views, dtype, batch_size, topk
        )
    finally:
        if hidden:
            teacher.lazy_logits = lazy


@keep_freed_memory()  # each batch's logits reuse the memory of the batch before
def _build(
    root, teacher, dataset, accelerator, signal, fingerprint, views, dtype, batch_size, topk
) -> TeacherCache:
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    main = rank == 0
    device = accelerator.device if accelerator else torch.device("cpu")
    count = len(dataset)
    if world > 1:
        agree_on_cache(root, fingerprint, accelerator)
    if main:
        claim(root)
    # One machine or a shared filesystem: every rank fills its rows of rank 0's files. Machines
    # with their own disks: rows are all-gathered and each machine's local main keeps a copy.
    gathered, writer = False, main
    if accelerator is not None and not one_machine(accelerator):
        everyone, sees = everyone_sees_main_root(root, accelerator)
        gathered = not everyone
        writer = main or (gathered and accelerator.is_local_main_process and not sees)
        if writer and not main:
            claim(root)
    fills = writer or not gathered
    shard = Subset(
        dataset, padded_shard(count, rank, world) if gathered else list(range(rank, count, world))
    )

    # The teacher in the run's precision, as it runs live in training (Loop: the accelerator's
    # autocast): a bf16 run builds its cache at bf16 speed and trains on what it would see live.
    precision = accelerator.autocast if accelerator else contextlib.nullcontext
    # Shapes from one sample, then every rank opens the same preallocated files.
    with precision():
        probe = teacher(to_device(next(iter(DataLoader(dataset, batch_size=1))), device))
    shapes = {name: tuple(value.shape[1:]) for name, value in signal_arrays(probe, signal).items()}
    files = {name: root / f"{name}.npy" for name in shapes}
    # Class indices as integers (float16 is exact only up to 2,048); values in ``dtype``.
    dtypes = {name: np.int32 if name.endswith(".index") else DTYPES[dtype] for name in shapes}
    if writer:
        layout = {
            files[name]: ((views, count, *shape), dtypes[name]) for name, shape in shapes.items()
        }
        needed = sum(
            math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in layout.values()
        )
        check_space(root, needed)
        allocate(root, layout, needed)
    if accelerator:
        accelerator.wait_for_everyone()
    arrays = {name: np.load(files[name], mmap_mode="r+") for name in shapes} if fills else {}
    with channels_last(teacher.module, device):
        for view in range(views):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(view + 1)  # the same view training epoch view+1 will draw
            for batch in DataLoader(shard, batch_size=batch_size, collate_fn=collate):
                batch = to_device(batch, device)
                with precision():
                    outputs = teacher(batch)
                outputs = signal_arrays(outputs, signal, batch["index"], view)
                output = {"index": batch["index"], **outputs}
                if gathered:
                    output = accelerator.gather(output)  # every rank's batch, in rank order
                rows = output.pop("index").cpu().numpy()
                for name, value in output.items() if fills else ():
                    if value.dtype == torch.bfloat16:  # autocast's; numpy has no bfloat16
                        value = value.float()
                    arrays[name][view, rows] = value.cpu().numpy().astype(dtypes[name])
    for array in arrays.values():
        array.flush()
    del arrays
    if accelerator:
        accelerator.wait_for_everyone()
    if writer:
        classes = probe.logits.shape[-1]
        head = {}
        if signal["kind"] == "hidden":
            size = save_tensors(root / HEAD, head_of(probe))
            head = {"head": {"file": HEAD, "bytes": size, "digest": stored_digest(root / HEAD)}}
        meta = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "views": views,
            "samples": count,
            "topk": None
            if topk is None
            else {"k": topk, "classes": classes, "temperature": signal["temperature"]},
            "signal": signal if signal["kind"] == "dense" else {**signal, "classes": classes},
            "arrays": {
                name: {
                    "file": path.name,
                    "shape": [views, count, *shapes[name]],
                    "dtype": np.dtype(dtypes[name]).name,
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
                for name, path in files.items()
            },
            **head,
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
        self._head: tuple | None = None  # (device, weight, bias): moved once per device

    @property
    def taps(self) -> list[str]:
        return [k.removeprefix("feature.") for k in self.cache.arrays if k.startswith("feature.")]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _head_on_device(self, logits: LazyLogits) -> tuple[Tensor, Tensor | None]:
        if self._head is None or self._head[0] != self.device:
            bias = None if logits.bias is None else logits.bias.to(self.device)
            self._head = (self.device, logits.weight.to(self.device), bias)
        return self._head[1:]

    def to(self, device) -> CachedTeacher:
        self.device = torch.device(device)
        return self

    def __call__(self, batch) -> ModelOutput:
        output = self.cache.lookup(batch["index"], view=self.epoch - 1)
        # A top-k or sampled cache travels as its (…, k) arrays; the losses gather the student
        # at the ids
        # on the device. Pinned pages let the copy overlap the step on a GPU.
        pin = self.device.type == "cuda"

        def move(value):
            return (
                value.pin_memory().to(self.device, non_blocking=True)
                if pin
                else value.to(self.device)
            )

        logits = output.logits
        if isinstance(logits, LazyLogits):  # the head moves once, the hidden states each batch
            logits = LazyLogits(move(logits.hidden), *self._head_on_device(logits))
        elif isinstance(logits, SPARSE_TEACHERS):
            logits = logits.map(move)
        else:
            logits = move(logits)
        return ModelOutput(logits, {k: move(v) for k, v in output.features.items()})
