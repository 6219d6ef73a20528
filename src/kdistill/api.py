"""The one-call path for people who never touch YAML: ``kdistill.distill(teacher, student, data)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdistill.data import ArrayDataset
from kdistill.distiller import Distiller, Teacher
from kdistill.methods import Term, hinton_kd, teacher_taps
from kdistill.trainer import evaluate, fit, make_accelerator


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
    set_seed(seed)
    train_set = as_dataset(train_data)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(as_dataset(val_data), batch_size=512) if val_data is not None else None
    terms = terms if terms is not None else hinton_kd(temperature=temperature, alpha=alpha)
    frozen = Teacher(teacher, taps=teacher_taps(terms))
    if any(term.connector or term.needs_build for term in terms):
        distiller = Distiller.build(
            student, terms, teacher=frozen, example_batch=next(iter(train_loader)), num_samples=len(train_set)
        )
    else:
        distiller = Distiller(student, terms)
    accelerator = make_accelerator(device)
    history = fit(
        distiller, train_loader, teacher=frozen, val_loader=val_loader, epochs=epochs,
        optimizer=optimizer, lr=lr, weight_decay=weight_decay, schedule=schedule,
        accelerator=accelerator, progress=progress,
    )
    metrics = {}
    if val_loader is not None:
        metrics["val/accuracy"] = evaluate(student, val_loader, accelerator)["accuracy"]
    return DistillResult(student=student, history=history, metrics=metrics)
