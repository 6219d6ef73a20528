"""A transfer set (``data.unlabelled``): inputs without labels that the teacher scores and the
distilled student learns from through the terms that need no label (Hinton et al. 2015).

The distilled student trains on one dataset: the training split followed by the transfer set,
whose samples carry the target ``UNLABELLED``; a term that compares with the labels
(``Term.takes_target``: CE, DKD, ...) is a mean over the labelled samples of a batch only. The
teacher trains on the training split (and, with ``teacher.data: rest``, on labelled samples no
student sees); the scratch student on the training split alone, for as many optimizer steps as
the distilled student (``BudgetSampler``). Recipes (``data.unlabelled``) and
``distill(unlabelled=...)`` share this module.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from kdistill.data.base import ArrayDataset, DataSplits, SampleBatch, collate
from kdistill.data.images import IMAGE_SUFFIXES, MAX_FOLDER_BYTES, image_header, read_image
from kdistill.data.inputs import TARGET_KEYS, as_sample
from kdistill.data.pool import MappedPool, map_npy, standardise
from kdistill.data.table import feature_matrix, read_table
from kdistill.errors import ConfigError, DataError

UNLABELLED = -1  # the target of a transfer-set sample: no class has it
REST = "rest"  # data.unlabelled: the bundled dataset's samples outside data.subset
# (rotten_tomatoes: and those of its training split beyond data.options.labelled)
REST_DATASETS = ("digits", "mnist", "rotten_tomatoes")
LABELLED_REST = ("digits", "mnist")  # teacher.data: rest; the snippets' labels are not kept
TABLES = (".csv", ".tsv", ".jsonl", ".parquet")


def attach_transfer(spec: str, splits: DataSplits) -> None:
    """Set ``splits.unlabelled`` from ``data.unlabelled`` and check it (empty, another shape or
    kind than the labelled inputs, rows of the test split): a ``DataError`` naming the field."""
    if spec != REST and splits.unlabelled is None:  # not read by the loader itself (texts)
        path = Path(spec)
        normalise = splits.identity.get("normalise", {})
        if path.suffix.lower() == ".npy":  # memory-mapped: a pool larger than memory streams
            splits.unlabelled = MappedPool(map_npy(path), normalise)
        else:
            if path.is_dir():
                raw = _from_folder(path, splits)
            elif path.suffix.lower() in TABLES:
                raw = _from_table(path, splits)
            else:
                raw = _from_npz(path)
            splits.unlabelled = torch.from_numpy(standardise(raw, normalise))
    inputs = splits.unlabelled
    if inputs is None or len(inputs) == 0:
        why = "no samples are left outside data.subset" if spec == REST else "it holds no samples"
        raise DataError(f"data.unlabelled: the transfer set is empty ({why}); give it inputs")
    held_out = getattr(splits.test, "inputs", None)  # tensors; a token set is split by text
    check_transfer(splits.train[0]["input"], inputs, held_out, "data.unlabelled")


def take_teacher_rest(splits: DataSplits, *, transfer: bool, seed: int) -> None:
    """``teacher.data: rest``: the teacher trains on the training split and the bundled samples
    outside data.subset with their labels (``splits.teacher_train``), a teacher that knows more
    than the student's labels, as a vendor's or a larger team's model does. With
    ``data.unlabelled: rest`` too, the rest is cut in two disjoint halves (drawn with the split's
    ``seed``, so both hold every class): the teacher's labelled half, and the transfer set, inputs
    the teacher never trained on, as a deployment's are. The rest's labels go no further."""
    inputs, targets = splits.unlabelled, splits.rest_targets
    if inputs is None or targets is None or len(targets) == 0:
        raise DataError("teacher.data: no samples are left outside data.subset; set data.subset")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(targets)))
    taught, pool = (
        (order[: len(order) // 2], order[len(order) // 2 :]) if transfer else (order, None)
    )
    train = splits.train
    splits.teacher_train = ArrayDataset(
        torch.cat([train.inputs, inputs[taught]]), torch.cat([train.targets, targets[taught]])
    )
    splits.unlabelled = None if pool is None else inputs[pool]
    splits.rest_targets = None
    splits.identity["teacher_data"] = {"rest": len(taught), "halves": transfer}


def check_transfer(labelled_example, inputs, held_out, field: str) -> None:
    """A transfer set's inputs of another shape or kind than ``labelled_example`` (one labelled
    input), or identical to samples of ``held_out`` (the test split: they would leak into
    training; compared where both are tensors), refused as a ``DataError`` naming ``field``."""
    first = inputs[0] if isinstance(inputs, Tensor) else inputs[0]["input"]
    if describe(first) != describe(labelled_example):
        raise DataError(
            f"{field}: inputs of shape {describe(first)}, but the labelled data's are "
            f"{describe(labelled_example)}: give inputs of the same kind"
        )
    if not isinstance(held_out, Tensor):
        return
    if isinstance(inputs, MappedPool):  # read in chunks, never whole
        chunks = inputs.chunks()
    elif isinstance(inputs, Tensor):
        chunks = [inputs]
    else:
        return
    test = {_digest(row) for row in held_out}
    leaks = sum(_digest(row) in test for chunk in chunks for row in chunk)
    if leaks:
        raise DataError(
            f"{field}: {leaks} sample(s) are identical to test samples, which would leak "
            "the test split into training: remove them from the transfer set"
        )


def describe(example) -> str:
    """One input's shape and kind: ``(1, 8, 8) (torch.float32)``, or per key of a dict."""
    if isinstance(example, Mapping):
        return ", ".join(f"{key} {describe(value)}" for key, value in sorted(example.items()))
    return f"{tuple(example.shape)} ({example.dtype})"


def _from_table(path: Path, splits: DataSplits) -> np.ndarray:
    """The labelled table's feature columns of a CSV / JSONL / Parquet file; its label column,
    if there, is ignored (said once)."""
    features, label = splits.identity.get("features"), splits.identity.get("label")
    if splits.identity.get("dataset") != "table" or not features:
        raise ConfigError(
            f"data.unlabelled: {path.name} is a table, and the labelled data is not "
            "(data.dataset=table): give an .npz with an array x"
        )
    frame = read_table(str(path), field="data.unlabelled")
    missing = [column for column in features if column not in frame.columns]
    if missing:
        raise DataError(
            f"data.unlabelled: {path} has no column {missing[0]!r}, a feature of the labelled table"
        )
    if label in frame.columns:
        print(f"data.unlabelled: {path} also holds the label column {label!r}: it is ignored")
    return feature_matrix(frame, features, path)


def _from_folder(root: Path, splits: DataSplits) -> np.ndarray:
    """The images directly in ``root`` (no class sub-folders), read as the labelled folder's
    were: its channels and its size (resized only where the labelled images were)."""
    identity = splits.identity
    if identity.get("dataset") != "folder":
        raise ConfigError(
            f"data.unlabelled: {root} is a folder of images, and the labelled data is not "
            "(data.dataset=folder): give an .npz with an array x"
        )
    files = sorted(file for file in root.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
    height, width = identity["image_size"]
    channels = identity["channels"]
    for file in files:
        _, size = image_header(file)  # bounds each image before a pixel is decoded
        if size != (width, height) and not identity["resized"]:
            raise DataError(
                f"data.unlabelled: {file} is {size[0]}×{size[1]} pixels, the labelled images "
                f"{width}×{height}: give images of their size, or set data.options.image_size"
            )
    needed = len(files) * channels * width * height * 4
    if needed > MAX_FOLDER_BYTES:
        raise DataError(
            f"data.unlabelled: {len(files):,} images take {needed:,} bytes as floats, more "
            f"than the limit of {MAX_FOLDER_BYTES:,}"
        )
    mode = "L" if channels == 1 else "RGB"
    if not files:
        return np.zeros((0, channels, height, width), dtype=np.float32)
    x = np.stack([read_image(file, mode, (width, height)) for file in files])
    return x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)


def _from_npz(path: Path) -> np.ndarray:
    """``x`` of an ``.npz`` in its natural range; a ``y`` there is ignored (said once)."""
    if path.suffix != ".npz":
        raise ConfigError(
            f"data.unlabelled: {str(path)!r} is neither {REST!r} (for {', '.join(REST_DATASETS)}), "
            f"a folder of images, a table ({', '.join(TABLES)}), an .npz file with an array x "
            "nor an .npy array (memory-mapped)"
        )
    if not path.is_file():
        raise DataError(f"data.unlabelled: {path} not found")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                names = ", ".join(arrays.files) or "none"
                raise DataError(f"data.unlabelled: {path} has no array 'x' (it has {names})")
            if "y" in arrays.files:
                print(f"data.unlabelled: {path} also holds labels 'y': they are ignored")
            x = arrays["x"]
    except (OSError, ValueError) as error:
        raise DataError(f"data.unlabelled: {path} is not a readable .npz ({error})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"data.unlabelled: {path}: x holds {x.dtype}, not numbers")
    return x


def _digest(row: Tensor) -> bytes:
    return hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()


def unlabelled_inputs(data, field: str = "unlabelled") -> Tensor | Dataset:
    """What ``distill(unlabelled=...)`` takes, as a transfer set: inputs alone (an array or a
    tensor; a dataset of inputs, of ``(x, y)`` tuples or of dicts; a ``DataLoader``'s dataset,
    its batching left to the run's). Labels found there are ignored, said once (a warning)."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(part, (Tensor, np.ndarray)) for part in data)
    ):
        warnings.warn(f"{field}: (x, y) given: the labels y are ignored", stacklevel=3)
        data = data[0]
    if isinstance(data, (Tensor, np.ndarray)):
        inputs = as_sample((data, torch.zeros(len(data))))["input"]
        if len(inputs) == 0:
            raise DataError(
                f"{field}: the transfer set is empty (it holds no samples); give it inputs"
            )
        return inputs
    if isinstance(data, Mapping) or not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise DataError(
            f"{field}: give inputs as an array or tensor, or a dataset with __len__ and "
            f"__getitem__, not a {type(data).__name__}"
        )
    dataset = UnlabelledInputs(data)
    if len(dataset) == 0:
        raise DataError(f"{field}: the transfer set is empty (it holds no samples); give it inputs")
    if dataset.labelled(0):
        warnings.warn(f"{field}: its samples carry labels: they are ignored", stacklevel=3)
    return dataset


class UnlabelledInputs(Dataset):
    """A user's dataset of inputs (tensors, ``(x, y)`` tuples, dicts with or without a label) as
    kdistill samples whose target is ``UNLABELLED``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def labelled(self, i: int) -> bool:
        item = self.dataset[i]
        if isinstance(item, Mapping):
            return any(key in item for key in TARGET_KEYS)
        return isinstance(item, (tuple, list)) and len(item) >= 2

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[int(i)]
        if isinstance(item, Mapping):
            item = {k: v for k, v in item.items() if k not in TARGET_KEYS and k != "index"}
            return as_sample({**item, "target": UNLABELLED}, int(i))
        x = item[0] if isinstance(item, (tuple, list)) else item
        return as_sample((x, UNLABELLED), int(i))


def with_transfer(
    train: Dataset, unlabelled: Tensor | Dataset, targets: Tensor | None = None
) -> Dataset:
    """The training split followed by the transfer set, whose targets are ``UNLABELLED`` (or
    ``targets``: pseudo-labels): one tensor dataset where both are tensors, else
    ``TransferDataset``."""
    if isinstance(train, ArrayDataset) and isinstance(unlabelled, Tensor):
        if targets is None:
            targets = torch.full((len(unlabelled),), UNLABELLED, dtype=train.targets.dtype)
        inputs = torch.cat([train.inputs, unlabelled])
        return ArrayDataset(inputs, torch.cat([train.targets, targets]))
    if isinstance(train, ArrayDataset) and isinstance(unlabelled, MappedPool):
        return MappedTransfer(train, unlabelled, targets)
    return TransferDataset(train, unlabelled, targets)


class TransferDataset(Dataset):
    """Labelled samples, then unlabelled ones (target ``UNLABELLED``), each at its position
    (``index``), for datasets that are not tensors of one shape (token dicts, a user's own)."""

    def __init__(self, labelled: Dataset, unlabelled: Dataset, targets: Tensor | None = None):
        self.labelled, self.unlabelled, self.targets = labelled, unlabelled, targets

    def __len__(self) -> int:
        return len(self.labelled) + len(self.unlabelled)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < len(self.labelled):
            sample = dict(self.labelled[i])
        else:
            i_pool = i - len(self.labelled)
            sample = dict(self.unlabelled[i_pool])
            labels = self.targets
            sample["target"] = torch.tensor(UNLABELLED) if labels is None else labels[i_pool]
        sample["index"] = torch.tensor(i)
        return sample


class MappedTransfer(TransferDataset):
    """Labelled tensors, then a memory-mapped pool (``MappedPool``): a batch is fetched in one
    read of each (``__getitems__``), as ``ArrayDataset`` fetches one, not sample by sample."""

    def __getitems__(self, indices: list[int]) -> SampleBatch:
        rows = torch.as_tensor(indices, dtype=torch.long)
        labelled, n = self.labelled, len(self.labelled)
        pooled = rows >= n
        inputs = torch.empty((len(rows), *labelled.inputs.shape[1:]), dtype=labelled.inputs.dtype)
        inputs[~pooled] = labelled.inputs[rows[~pooled]]
        inputs[pooled] = self.unlabelled.take((rows[pooled] - n).numpy())
        targets = torch.full((len(rows),), UNLABELLED, dtype=labelled.targets.dtype)
        targets[~pooled] = labelled.targets[rows[~pooled]]
        if self.targets is not None:  # the teacher's hard labels (pseudo-labels)
            targets[pooled] = self.targets[rows[pooled] - n]
        return SampleBatch({"input": inputs, "target": targets, "index": rows})


class BudgetSampler(Sampler[int]):
    """The positions one epoch draws, ``draws`` of them, from ``labelled`` samples followed by
    ``unlabelled`` ones, each part in fresh permutations for as long as it is drawn.

    Every student of a run with a transfer set draws the same number per epoch (the labelled
    and the unlabelled count), so all take the same optimizer steps: the scratch student goes
    over its labelled samples (L + U) / L times an epoch. ``labelled_share`` is the fraction of
    the draws taken from the labelled samples; ``None``: the natural proportion, L / (L + U),
    both shuffled together."""

    def __init__(
        self,
        labelled: int,
        unlabelled: int,
        draws: int,
        labelled_share: float | None = None,
        generator: torch.Generator | None = None,
    ):
        self.labelled, self.unlabelled, self.draws = labelled, unlabelled, draws
        self.share, self.generator = labelled_share, generator

    def __len__(self) -> int:
        return self.draws

    def __iter__(self):
        g, draws = self.generator, self.draws
        if self.unlabelled == 0 or self.share is None:
            order = _cycled(self.labelled + self.unlabelled, draws, g)
        else:
            from_labelled = min(max(round(self.share * draws), 1), draws)
            order = torch.cat(
                [
                    _cycled(self.labelled, from_labelled, g),
                    self.labelled + _cycled(self.unlabelled, draws - from_labelled, g),
                ]
            )
            order = order[torch.randperm(draws, generator=g)]
        return iter(order.tolist())


@dataclass
class TransferSet:
    """``distill(unlabelled=...)``'s labelled data and transfer set, and the loaders that draw
    one epoch's budget from them."""

    labelled: torch.utils.data.Dataset
    inputs: torch.Tensor | torch.utils.data.Dataset
    share: float | None
    batch_size: int
    seed: int

    def loader(self, *, labelled_only: bool = False) -> DataLoader:
        """Both sets (or, for the scratch student, the labelled alone) drawn for the same
        number of samples per epoch, so every student takes the same optimizer steps."""
        labelled, unlabelled = len(self.labelled), len(self.inputs)
        dataset = self.labelled if labelled_only else with_transfer(self.labelled, self.inputs)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = BudgetSampler(
            labelled,
            0 if labelled_only else unlabelled,
            labelled + unlabelled,
            self.share,
            generator,
        )
        # the sampler's generator is the loader's, where train_loop saves the data order
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            generator=generator,
        )

    def record(self, steps: int) -> dict:
        return {
            "labelled": len(self.labelled),
            "unlabelled": len(self.inputs),
            "labelled_share": self.share,
            "steps_per_epoch": steps,
        }


def _cycled(count: int, draws: int, generator: torch.Generator | None) -> Tensor:
    """``draws`` positions below ``count``: permutations one after another, the last cut."""
    rounds = -(-draws // count) if draws else 0
    perms = [torch.randperm(count, generator=generator) for _ in range(rounds)]
    return torch.cat(perms)[:draws] if perms else torch.zeros(0, dtype=torch.long)


def labelled_mask(target: Tensor) -> Tensor:
    """Which samples of a batch carry a label."""
    return target != UNLABELLED
