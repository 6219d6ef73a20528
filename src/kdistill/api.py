"""The one-call path for people who never touch YAML: ``kdistill.distill(teacher, student, data)``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdistill.data import ArrayDataset
from kdistill.distiller import Distiller, Teacher, call_model
from kdistill.methods import Term, hinton_kd, teacher_taps
from kdistill.trainer import Optimization, evaluate, fit, make_accelerator


class _IndexedDataset(Dataset):
    """Adapts a dataset of ``(input, target)`` pairs to the ``{"input", "target", "index"}``
    samples the rest of kdistill reads."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        if isinstance(sample, Mapping):
            return {**sample, "index": torch.tensor(i)}
        inputs, target = sample[0], sample[1]
        return {"input": inputs, "target": torch.as_tensor(target), "index": torch.tensor(i)}


def as_dataset(data) -> Dataset:
    """A pair of tensors ``(x, y)``, or any dataset of ``(x, y)`` pairs or dict samples."""
    if isinstance(data, Sequence) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return ArrayDataset(*data)
    if isinstance(data, ArrayDataset):
        return data
    return _IndexedDataset(data)


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict]
    metrics: dict = field(default_factory=dict)


def distill(
    teacher: nn.Module,
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
    progress: bool = True,
) -> DistillResult:
    """Train ``student`` to imitate ``teacher`` with Hinton KD, ``(1−α)·CE + α·T²·KL``.

    Args:
        teacher: a trained model; it is frozen (eval mode, no gradients) and never changed.
        student: the model to train, in place.
        train_data / val_data: ``(x, y)`` tensor pairs, or datasets of ``(x, y)`` pairs.
        temperature, alpha: of the KD term; ignored when ``terms`` is given.
        terms: any list of ``Term``s instead of Hinton KD (feature terms, other losses).

    Returns:
        ``DistillResult`` with the trained student, one record per epoch, and the final
        validation accuracy (a fraction) when ``val_data`` is given.
    """
    _check_hyper(temperature, alpha, terms)
    set_seed(seed)
    train_set = as_dataset(train_data)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(as_dataset(val_data), batch_size=512) if val_data is not None else None
    terms = terms if terms is not None else hinton_kd(temperature=temperature, alpha=alpha)
    student_was_training = student.training
    frozen = Teacher(teacher, taps=teacher_taps(terms))
    distiller = None
    try:
        # The first two samples, not a batch of train_loader: that would draw from its generator.
        _check_output_sizes(frozen, student, next(iter(DataLoader(train_set, batch_size=2))))
        if any(term.connector or term.needs_build for term in terms):
            distiller = Distiller.build(
                student, terms, teacher=frozen, example_batch=next(iter(train_loader)), num_samples=len(train_set)
            )
        else:
            distiller = Distiller(student, terms)
        accelerator = make_accelerator(device)
        history = fit(
            distiller, train_loader, teacher=frozen, val_loader=val_loader, epochs=epochs,
            lr=lr, optim=Optimization(optimizer, weight_decay=weight_decay, schedule=schedule),
            accelerator=accelerator, progress=progress,
        )
        metrics = {}
        if val_loader is not None:
            metrics["val/accuracy"] = evaluate(student, val_loader, accelerator)["accuracy"]
    finally:
        # The models are the user's: no forward hook of ours stays on them, whatever happened.
        for tap in (frozen.tap, distiller.tap if distiller is not None else None):
            if tap is not None:
                tap.remove()
        student.train(student_was_training)
    return DistillResult(student=student, history=history, metrics=metrics)


def _check_hyper(temperature: float, alpha: float, terms: list[Term] | None) -> None:
    """Hinton KD's settings, refused before anything trains (ignored when ``terms`` is given)."""
    if terms is not None:
        return
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number (softmax(z/T) needs T > 0), got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha weighs the KD term against cross-entropy, (1-α)·CE + α·KD: give 0 <= alpha <= 1, got {alpha!r}")


def _check_output_sizes(teacher: Teacher, student: nn.Module, example: dict) -> None:
    """Teacher and student must score the same classes; said now, with both sizes, rather than
    as an index error deep inside a loss."""
    was_training = student.training
    with torch.no_grad():
        teacher_outputs = teacher(example).logits.shape[-1]
        student_outputs = call_model(student.eval(), example["input"]).shape[-1]
    student.train(was_training)
    if teacher_outputs != student_outputs:
        raise ValueError(
            f"the teacher has {teacher_outputs} outputs but the student has {student_outputs}: "
            "build both for the same classes"
        )
