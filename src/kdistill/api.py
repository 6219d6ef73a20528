"""The one-call path for people who never touch YAML: ``kdistill.distill(teacher, student, data)``.

Data may be what a PyTorch user already holds (see ``kdistill.data.inputs``): NumPy arrays or
tensors ``(x, y)``, a dataset of ``(x, y)`` tuples or dicts, a ``DataLoader``, a Hugging Face
``datasets.Dataset``. The teacher may be an ``nn.Module`` (a Hugging Face model too) or the path
of an ``.onnx`` file.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from kdistill.data import ArrayDataset
from kdistill.data.inputs import IndexedDataset, as_dataset, as_loader, class_labels
from kdistill.distiller import Distiller, Teacher
from kdistill.errors import ArgumentError, DataError
from kdistill.evaluation.baseline import initial_copy, result_table, scratch_baseline
from kdistill.evaluation.classification import evaluate
from kdistill.methods import Term, hinton_kd, scratch, teacher_taps
from kdistill.modeling import to_device
from kdistill.teachers.cache import CachedTeacher, open_or_build, teacher_identity
from kdistill.teachers.onnx import OnnxModel, check_onnx_terms, is_onnx_file
from kdistill.teachers.pair import MismatchError, check_pair
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import train_loop as train
from kdistill.training.optimization import Optimization


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict]
    metrics: dict = field(default_factory=dict)
    # Trained projections between student and teacher features (FitNet's regressor, CRD's
    # embeddings ...), by term name: empty for logit-only terms.
    connectors: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    # baseline=True: the scratch student, its and the teacher's validation accuracy, the paired
    # comparison with the distilled student, and the verdict (kdistill.evaluation.baseline).
    baseline: nn.Module | None = None
    baseline_history: list[dict] = field(default_factory=list)
    baseline_metrics: dict = field(default_factory=dict)
    teacher_metrics: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    verdict: str = ""

    def __repr__(self) -> str:
        return result_table(self)


def as_teacher(teacher, terms: list[Term]) -> Teacher:
    """A frozen ``Teacher`` from an ``nn.Module``, a Hugging Face model, a ``Teacher`` or the path
    of an ``.onnx`` file, tapping what ``terms`` read."""
    taps = teacher_taps(terms)
    if isinstance(teacher, Teacher):
        return teacher if set(taps) <= set(teacher.taps) else Teacher(teacher.module, taps=taps)
    if is_onnx_file(teacher):
        check_onnx_terms(terms, field="teacher")
        return Teacher(OnnxModel(teacher, field="teacher"))
    if isinstance(teacher, nn.Module):
        return Teacher(teacher, taps=taps)
    if isinstance(teacher, (str, Path)):
        raise MismatchError(
            f"teacher: {teacher} is a path but not an .onnx file; for a state_dict (.pt, .safetensors), build the "
            "model and load it with kdistill.load_weights(model, path), then pass the model"
        )
    raise MismatchError(f"teacher: give an nn.Module, a Hugging Face model or an .onnx file, not a {type(teacher).__name__}")


def _probe_batch(loader: DataLoader) -> dict:
    """The first two samples in the dataset's order, without drawing from the loader's sampler."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return next(iter(loader))
    return next(iter(DataLoader(loader.dataset, batch_size=2, collate_fn=loader.collate_fn)))


def _cached(teacher: Teacher, loader: DataLoader, cache, stack: ExitStack, accelerator) -> CachedTeacher:
    """The teacher's outputs over the training samples, computed once (``cache=True``: in a
    temporary directory for this call; a path: kept there and reused while it matches)."""
    dataset = loader.dataset
    if not isinstance(dataset, (ArrayDataset, IndexedDataset)):
        dataset = as_dataset(dataset.dataset)  # a user's DataLoader: its dataset, positioned by as_loader
    if cache is True:
        root = _temporary_root(stack, accelerator)
    else:
        root = Path(cache)
    fingerprint = {"teacher": teacher_identity(teacher.module), "samples": len(dataset), "taps": sorted(teacher.taps), "dtype": "float32"}
    stored, _ = open_or_build(
        root, teacher, dataset, fingerprint=fingerprint, dtype="float32", accelerator=accelerator
    )
    return CachedTeacher(stored)


def _temporary_root(stack: ExitStack, accelerator) -> Path:
    """A temporary cache directory for this call, the main process's for every process (each
    fills its rows of the same files), removed once every process is done with it."""
    from accelerate.utils import broadcast_object_list

    made = [None]
    if accelerator.is_main_process:
        made = [stack.enter_context(tempfile.TemporaryDirectory(prefix="kdistill-cache-"))]
    if accelerator.num_processes > 1:
        broadcast_object_list(made)
        stack.callback(accelerator.wait_for_everyone)  # runs before the directory is removed
    return Path(made[0]) / "cache"


def distill(
    teacher,
    student: nn.Module,
    train_data,
    val_data=None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    terms: list[Term] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    device: str = "auto",
    seed: int = 0,
    cache: bool | str | Path = False,
    progress: bool = True,
    baseline: bool = False,
) -> DistillResult:
    """Train ``student`` to imitate ``teacher`` with Hinton KD, ``(1−α)·CE + α·T²·KL``.

    Args:
        teacher: a trained model (an ``nn.Module`` or Hugging Face model), or the path of an
            ``.onnx`` file (run by ONNX Runtime; logit-level terms only). It is frozen (eval
            mode, no gradients) and never changed.
        student: the model to train, in place.
        train_data / val_data: ``(x, y)`` NumPy arrays or tensors, a dataset of ``(x, y)``
            tuples or of dicts (a ``TensorDataset``, a Hugging Face ``datasets.Dataset``), or a
            ``DataLoader`` (used as it is: its batch size, sampler and collate function).
            Labels are class indices 0..C-1: whole-number floats are taken as those integers
            and a column ``(N, 1)`` as ``(N,)``; fractions, NaN, negative labels and empty
            data raise ``DataError`` (checked in full for arrays, tensors and lists).
        epochs, batch_size: whole numbers of at least 1 (``ArgumentError`` otherwise).
        temperature, alpha: of the KD term; ignored when ``terms`` is given.
        terms: any list of ``Term``s instead of Hinton KD (feature terms, other losses).
        cache: run the teacher once over the training data and read its outputs from disk
            (``True``: a temporary directory; a path: kept there and reused while it matches).
        baseline: also train the same student from the same initial weights without the
            teacher (cross-entropy only, the same epochs and steps) and compare the three
            models on ``val_data`` (required): a paired bootstrap interval and McNemar's test.

    Returns:
        ``DistillResult`` with the trained student, one record per epoch, the final
        validation accuracy (a fraction) when ``val_data`` is given, and the trained
        ``connectors`` of feature terms; with ``baseline``, the scratch student, its and the
        teacher's accuracy, the comparison and the verdict (``print(result)`` shows them).
    """
    _check_hyper(temperature, alpha, terms)
    _check_budget(epochs, batch_size)
    set_seed(seed)
    train_data = class_labels(train_data, "train_data")
    val_data = class_labels(val_data, "val_data") if val_data is not None else None
    train_loader = as_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed)
    val_loader = as_loader(val_data, batch_size=512) if val_data is not None else None
    terms = terms if terms is not None else hinton_kd(temperature=temperature, alpha=alpha)
    if baseline and val_data is None:
        raise ArgumentError("baseline=True compares the students on val_data: give val_data")
    initial = initial_copy(student, baseline)
    student_was_training = student.training
    frozen = as_teacher(teacher, terms)
    distiller = None
    accelerator = make_accelerator(device)
    try:
        with ExitStack() as stack:
            # Both models and the probe on the device the run trains on: what fails there
            # fails now, naming both sides.
            example = to_device(_probe_batch(train_loader), accelerator.device)
            frozen, student = frozen.to(accelerator.device), student.to(accelerator.device)
            scores = check_pair(frozen, student, example)
            if len(scores) == 2 and scores[-1] < 2:  # one class: softmax is 1, nothing to learn
                raise MismatchError(
                    f"the models score {scores[-1]} class: cross-entropy and distillation compare "
                    "distributions over 2 or more classes; build both for 2 or more classes"
                )
            for what, loader in (("train_data", train_loader), ("val_data", val_loader)):
                _check_classes(loader, scores, what)
            if any(term.connector or term.needs_build for term in terms):
                distiller = Distiller.build(student, terms, teacher=frozen, example_batch=example, num_samples=len(train_loader.dataset))
            else:
                distiller = Distiller(student, terms)
            live = _cached(frozen, train_loader, cache, stack, accelerator) if cache else frozen
            history = train(
                distiller, train_loader, teacher=live, val_loader=val_loader, epochs=epochs,
                lr=lr, optim=Optimization(optimizer, weight_decay=weight_decay, schedule=schedule),
                accelerator=accelerator, progress=progress,
            )
            metrics = {}
            if val_loader is not None:
                metrics["val/accuracy"] = evaluate(student, val_loader, accelerator)["accuracy"]
            compared = {}
            if baseline:  # the same budget and data order, no teacher, no distillation terms
                set_seed(seed)
                compared = scratch_baseline(
                    initial, lambda model: train(
                        Distiller(model, scratch()),
                        as_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed),
                        val_loader=val_loader, epochs=epochs, lr=lr, accelerator=accelerator,
                        optim=Optimization(optimizer, weight_decay=weight_decay, schedule=schedule),
                        progress=progress,
                    ),
                    teacher=frozen.module, distilled=student, val_loader=val_loader,
                    accelerator=accelerator, classes=scores[-1],
                    settings=f"lr={lr:g}, epochs={epochs}, batch_size={batch_size}",
                )
    finally:
        # The models are the user's: no forward hook of ours stays on them, whatever happened.
        for tap in (frozen.tap, distiller.tap if distiller is not None else None):
            if tap is not None:
                tap.remove()
        student.train(student_was_training)
    return DistillResult(student=student, history=history, metrics=metrics,
                         connectors=distiller.connectors, **compared)


def fit(
    distiller: Distiller,
    train_data,
    *,
    teacher=None,
    val_data=None,
    batch_size: int = 64,
    seed: int = 0,
    **options,
) -> list[dict]:
    """Train a ``Distiller`` (``kdistill.training.loop.train_loop``) on what a PyTorch user holds.

    ``train_data`` / ``val_data`` (or ``val_loader``) take everything ``distill`` takes; a
    ``DataLoader`` keeps its own batch size and order, other data is batched by ``batch_size``
    and shuffled with ``seed``. ``teacher`` may be an ``nn.Module``, a Hugging Face model, a
    ``Teacher``, a cached teacher or an ``.onnx`` path. Other options go to the trainer.
    """
    loader = as_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed)
    val = options.pop("val_loader", None) if val_data is None else val_data
    if val is not None:
        options["val_loader"] = as_loader(val, batch_size=512)
    if teacher is not None and not isinstance(teacher, (Teacher, CachedTeacher)) and not hasattr(teacher, "lookup"):
        teacher = as_teacher(teacher, distiller.terms)
    return train(distiller, loader, teacher=teacher, **options)


def _check_budget(epochs: int, batch_size: int) -> None:
    """Refused before anything trains: ``epochs=0`` or less used to return the student
    untrained, without a word."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name}={value!r}: give a whole number of at least 1")


def _check_classes(loader: DataLoader | None, scores: torch.Size, what: str) -> None:
    """Every label of ``(x, y)`` arrays (``scores``: the shape of the student's outputs) one
    class of the models, not only the probe's."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, ArrayDataset):
        return
    labels, classes = dataset.targets, scores[-1]
    if len(scores) == 2 and labels.dim() != 1:  # one score vector per sample, several labels
        raise DataError(
            f"{what}: y has shape {tuple(labels.shape)}, but the models score one class per "
            f"sample: give one class index per sample, shape ({len(labels)},) (for one-hot rows, "
            "y.argmax(1))"
        )
    if labels.dim() != 1 or labels.is_floating_point():
        return
    if what == "train_data" and labels.unique().numel() < 2:
        raise DataError(
            f"{what}: every label is {int(labels[0])}: a model trained on one class learns "
            "nothing to tell apart; give samples of 2 or more classes"
        )
    largest = int(labels.max())
    if largest >= classes:
        at = int((labels == largest).nonzero()[0])
        raise MismatchError(
            f"{what}: the data has label {largest} (y[{at}]) but the models have {classes} "
            f"outputs: labels are 0..{classes - 1}"
        )


def _check_hyper(temperature: float, alpha: float, terms: list[Term] | None) -> None:
    """Hinton KD's settings, refused before anything trains (ignored when ``terms`` is given)."""
    if terms is not None:
        return
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ArgumentError(
            f"temperature must be a positive number (softmax(z/T) needs T > 0), got {temperature!r}"
        )
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ArgumentError(
            "alpha weighs the KD term against cross-entropy, (1-α)·CE + α·KD: "
            f"give 0 <= alpha <= 1, got {alpha!r}"
        )


__all__ = ["DistillResult", "MismatchError", "as_teacher", "check_pair", "distill", "fit"]
