"""The teacher cache of a cross-tokenizer run: one cache for any student tokenizer.

A student's windows depend on its tokenizer; the teacher's view of the text does not. So this
cache is keyed by what the teacher reads (its weights, its tokenizer, the text, k) and never by
the student, and holds, for every position p of the teacher's tokenisation of the whole text
(p predicts token p + 1): the teacher's k most probable next tokens (int32) with their
log-probabilities, the log of the mass left over (the tail), the log-probability of the token
that does follow (it may lie outside the top k; the chunk merges of
``kdistill.losses.cross_tokenizer`` need it), and each token's byte span in the text. A student
window of any tokenizer covers some bytes; the teacher positions inside them are read back
from the cache and aligned with the student's tokens on those byte offsets as the live teacher's
are (``kdistill.data.alignment``).

The teacher reads the text in a grid of windows: window j stores positions jW ... jW + W - 1
and reads the C = L - W tokens before them as context (L: the length the teacher was built for
in the run that made the cache, kept in its meta.json; W = L // 2), so every stored prediction
saw at least C tokens of the text before it (the live teacher, which starts at the student
window's first token, sees fewer at a window's start).
Each grid window is a safetensors file of its own, written (atomically, with its checksum)
when some run first needs it: a run computes only the windows its training windows touch, and a
run with another student tokenizer reads those back and computes the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from kdistill.distiller import Teacher
from kdistill.errors import UserError
from kdistill.io.files import atomic_write
from kdistill.io.tensors import CheckpointError, load_tensors, save_tensors
from kdistill.losses.cross_tokenizer import AlignedTeacher
from kdistill.losses.sparse import SparseTeacher
from kdistill.modeling import ALIGNMENT_KEYS, TEACHER_PREFIX, ModelOutput, call_model
from kdistill.teachers.identity import teacher_identity
from kdistill.teachers.store import MARKER

FORMAT = "kdistill-text-cache/1"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
FIELDS = ("indices", "log_probs", "tail", "target")


def text_fingerprint(identity: dict, tokenizer, text, *, k: int, dtype: str) -> dict:
    """What the cache's contents depend on: the teacher (``teacher_identity``), its tokenizer,
    the text (``TeacherText``), k and the stored dtype; never the student's tokenizer."""
    return {
        "format": FORMAT,
        "teacher": identity,
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16],
        "text": text.digest,
        "tokens": len(text.ids),
        "k": k,
        "dtype": dtype,
    }


class TextCache:
    """The grid of a teacher's top k over a text, under ``root``; see the module docstring.

    Args:
        root: the cache's directory (made if missing; a directory holding files this cache did
            not write is refused).
        fingerprint: ``text_fingerprint``; a cache at ``root`` made for another is refused.
        text: the teacher's tokens of the text, checked against the stored ones.
        length: the tokens the teacher reads per grid window, for a new cache (an existing
            one keeps its own: the grid is the cache's, whatever reads it later).
    """

    def __init__(self, root: str | Path, fingerprint: dict, text, *, length: int):
        self.root, self.fingerprint, self.text = Path(root), fingerprint, text
        self.k, self.length = fingerprint["k"], length
        self.windows: dict[int, dict[str, Tensor]] = {}
        self._open()
        self.stride = max(self.length // 2, 1)

    # --- the directory ------------------------------------------------------------------------

    def _open(self) -> None:
        meta = self.root / "meta.json"
        if meta.is_file():
            try:
                written = json.loads(meta.read_bytes())
                stored, self.length = written["fingerprint"], int(written["length"])
            except (OSError, ValueError, KeyError, TypeError):
                raise CheckpointError(
                    f"{meta}: corrupted text-cache metadata; delete {self.root} and build it again"
                ) from None
            if stored != self.fingerprint:
                field = next(
                    k for k in sorted(self.fingerprint) if stored.get(k) != self.fingerprint[k]
                )
                raise UserError(
                    f"{self.root}: the teacher's text cache was made for another {field} "
                    f"({stored.get(field)!r}, this run has {self.fingerprint[field]!r}); point "
                    "teacher.cache_dir elsewhere, or delete it to build it again"
                )
            tokens, _ = load_tensors(
                self.root / "tokens.safetensors", what="text cache", expect_digest=True
            )
            if not torch.equal(tokens["ids"], self.text.ids):
                raise CheckpointError(
                    f"{self.root}: the text cache's tokens differ from the teacher's tokens of "
                    "this text; delete it and build it again"
                )
            return
        if self.root.exists() and any(p.name != MARKER for p in self.root.iterdir()):
            raise UserError(
                f"teacher.cache_dir: {self.root} already holds files that are not a kdistill "
                "teacher cache; point it at a new or empty directory"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / MARKER, "kdistill teacher cache\n")
        save_tensors(
            self.root / "tokens.safetensors", {"ids": self.text.ids, "spans": self.text.spans}
        )
        written = {"fingerprint": self.fingerprint, "length": self.length}
        atomic_write(meta, json.dumps(written, indent=1) + "\n")

    def _file(self, window: int) -> Path:
        return self.root / f"window-{window:06d}.safetensors"

    def stored(self) -> list[int]:
        """The grid windows on disk."""
        return sorted(int(p.stem.split("-")[1]) for p in self.root.glob("window-*.safetensors"))

    # --- building -----------------------------------------------------------------------------

    def needed(self, starts: Tensor, length: int) -> list[int]:
        """The grid windows that teacher positions ``starts[i] ... starts[i] + length - 1``
        fall in (positions past the text's last prediction are not needed)."""
        last = len(self.text.ids) - 2
        first = starts.clamp(0, last) // self.stride
        end = (starts + length - 1).clamp(0, last) // self.stride
        return sorted({j for a, b in zip(first.tolist(), end.tolist()) for j in range(a, b + 1)})

    @torch.no_grad()
    def build(self, model: torch.nn.Module, windows: list[int], *, batch_size: int, device) -> int:
        """Run ``model`` over the grid ``windows`` not yet on disk and store them; returns how
        many were computed."""
        missing = [j for j in windows if not self._file(j).is_file()]
        model.eval()
        ids, last = self.text.ids, len(self.text.ids) - 1
        for begin in range(0, len(missing), batch_size):
            group = missing[begin : begin + batch_size]
            reads = []
            for j in group:  # [context | stored positions], the last token only as a target
                first = j * self.stride
                reads.append(
                    (
                        max(first - (self.length - self.stride), 0),
                        first,
                        min(first + self.stride, last),
                    )
                )
            width = max(stop - start for start, _, stop in reads)
            inputs = torch.zeros(len(group), width, dtype=torch.int64)
            for row, (start, _, stop) in enumerate(reads):
                inputs[row, : stop - start] = ids[start:stop]
            logits = call_model(model, {"input_ids": inputs.to(device)})
            log_p = torch.log_softmax(logits.float(), -1).cpu()
            for row, (j, (start, first, stop)) in enumerate(zip(group, reads)):
                kept = log_p[row, first - start : stop - start]
                top, index = kept.topk(min(self.k, kept.shape[-1]), dim=-1)
                tail = torch.logsumexp(kept.scatter(-1, index, float("-inf")), -1)
                target = kept.gather(-1, ids[first + 1 : stop + 1, None]).squeeze(-1)
                arrays = {
                    "indices": index.to(torch.int32),
                    "log_probs": top.to(DTYPES[self.fingerprint["dtype"]]),
                    "tail": tail,
                    "target": target,
                }
                save_tensors(self._file(j), arrays)
        return len(missing)

    # --- reading ------------------------------------------------------------------------------

    def _window(self, j: int) -> dict[str, Tensor]:
        if j not in self.windows:
            file = self._file(j)
            if not file.is_file():
                raise CheckpointError(
                    f"{file}: this grid window of the teacher's text cache is missing; run "
                    "`kdistill cache RECIPE` or the run again to build it"
                )
            self.windows[j] = load_tensors(file, what="text cache", expect_digest=True)[0]
        return self.windows[j]

    def gather(self, positions: Tensor) -> tuple[Tensor, ...]:
        """The stored (indices, log_probs, tail, target) at teacher ``positions`` (any shape),
        each clamped into the text's predictions (padding reads a real position; its chunk is
        unaligned, so no loss reads it)."""
        flat = positions.reshape(-1).clamp(0, len(self.text.ids) - 2)
        grid = flat // self.stride
        out = None
        for j in grid.unique().tolist():
            rows = torch.nonzero(grid == j).squeeze(-1)
            window = self._window(j)
            if out is None:
                out = [
                    torch.empty((len(flat), *window[f].shape[1:]), dtype=window[f].dtype)
                    for f in FIELDS
                ]
            for field, target in zip(FIELDS, out):
                target[rows] = window[field][flat[rows] - j * self.stride]
        return tuple(t.reshape(*positions.shape, *t.shape[1:]) for t in out)

    def describe(self) -> str:
        stored = self.stored()
        size = sum(self._file(j).stat().st_size for j in stored)
        return (
            f"{len(stored)} grid window(s) of {self.stride} teacher positions (top {self.k}, "
            f"{self.length - self.stride} tokens of context), {size / 1e6:.1f} MB"
        )


def text_cached_teacher(
    module,
    splits,
    *,
    k: int,
    dtype: str,
    root: str | None,
    folder: Path,
    batch_size: int,
    accelerator,
    progress: bool = True,
) -> TextCachedTeacher:
    """A run's cached teacher across tokenizers: the ``TextCache`` of ``module``'s teacher over
    the training text at ``root`` (or ``folder/text-<key>``), with the grid windows this run's
    training windows touch computed (by the main process) when not on disk yet."""
    train = splits.train
    length = int(splits.identity["teacher_input_shape"][0])
    fingerprint = text_fingerprint(
        teacher_identity(module.teacher), train.teacher_tokenizer, train.text, k=k, dtype=dtype
    )
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root) if root else folder / f"text-{key}"
    started, computed, cache = time.perf_counter(), 0, None
    if accelerator.is_main_process:
        cache = TextCache(root, fingerprint, train.text, length=length)
        windows = cache.needed(train.teacher["start"], train.teacher["input_ids"].shape[-1])
        device = next(module.teacher.parameters()).device
        computed = cache.build(module.teacher, windows, batch_size=batch_size, device=device)
    accelerator.wait_for_everyone()
    if cache is None:
        cache = TextCache(root, fingerprint, train.text, length=length)
    if computed and accelerator.is_main_process and progress:
        print(
            f"teacher text cache: {computed} grid window(s) computed in "
            f"{time.perf_counter() - started:.1f} s; {cache.describe()} at {root}"
        )
    return TextCachedTeacher(module, cache)


class TextCachedTeacher(Teacher):
    """A ``CrossTokenizerTeacher`` read from a ``TextCache``: each batch's teacher positions
    (``teacher_start`` + 0 ... L_T - 1 of the whole text) as a ``SparseTeacher`` of the top k
    with the batch's own alignment; the model never runs."""

    def __init__(self, module, cache: TextCache):
        super().__init__(module)
        self.cache = cache

    def __call__(self, batch: Mapping) -> ModelOutput:
        inputs = batch["input"]
        length = inputs[TEACHER_PREFIX + "input_ids"].shape[-1]
        device = batch["teacher_start"].device
        positions = batch["teacher_start"].cpu()[:, None] + torch.arange(length)
        indices, log_probs, tail, target = self.cache.gather(positions)
        return ModelOutput(
            AlignedTeacher(
                SparseTeacher(
                    indices.to(device), log_probs.to(device), tail.to(device), temperature=1.0
                ),
                *(inputs[TEACHER_PREFIX + key] for key in ALIGNMENT_KEYS),
                target_log_prob=target.to(device),
                shared=self.module.shared,
                projection=self.module.projection,
            )
        )


__all__ = ["FORMAT", "TextCache", "TextCachedTeacher", "text_cached_teacher", "text_fingerprint"]
