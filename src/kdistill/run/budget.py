"""``train.time_budget``: the epochs that fit a wall-clock budget, from the cost of a training
step measured before anything trains.

The budget fixes one number of epochs, before training, for every phase: the scratch and the
distilled student take the identical number of steps. (A clock that stopped whichever student
trains second when time ran out would compare a shorter training with a longer one.) An epoch's
cost is measured on the run's own models and batches: a few optimizer steps of the student
(the scratch phase and the distilled one), the teacher's forward pass over the distilled
student's batches (scored live: with a cache it runs once per view, so the estimate errs long),
the teacher's own training where it is trained here, and the validation passes. The budget
holds the training, not the data loading or the final evaluation and report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill.modeling import call_model, to_device

# A budget within which epochs are chosen, as the budget of updates does (automatic.EPOCH_BOUNDS
# caps both): a large budget on a small set does not train hundreds of epochs.
BUDGET_EPOCHS = (1, 100)
MEASURED_STEPS = 3  # after one warm-up step, the median of these


@dataclass(frozen=True)
class EpochCost:
    """Measured seconds of one epoch: the two students with their validation and every
    teacher's scoring of the distilled student's batches (``students``), and each teacher's own
    training epoch with its validation (``teachers``, in the recipe's order; 0 for a teacher
    loaded rather than trained here)."""

    students: float
    teachers: tuple[float, ...] = ()


@dataclass(frozen=True)
class TeacherCost:
    """A teacher as the budget measures it: the model (an ensemble member, an ONNX graph),
    whether it trains here, and its training batches per epoch (``teacher.data`` adds some)."""

    model: nn.Module
    trained: bool
    batches: int


def step_seconds(model: nn.Module, batches: list[dict], *, train: bool = True) -> float:
    """Median seconds of a training step (forward, backward, Adam update) of ``model`` on
    ``batches``, or of a forward pass without gradient (``train=False``); the model's weights
    are restored afterwards (the measurement trains nothing)."""
    saved = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    mode = model.training
    model.train(train)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    times = []
    try:
        with torch.random.fork_rng():
            for batch in batches[: MEASURED_STEPS + 1]:
                started = time.perf_counter()
                with torch.set_grad_enabled(train):
                    output = call_model(model, batch["input"])
                    if train:
                        output.float().square().mean().backward()  # a loss's cost, any task
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - started)
    finally:
        model.load_state_dict(saved)
        model.train(mode)
    measured = sorted(times[1:] or times)
    return measured[len(measured) // 2]


def measure_epoch(
    student: nn.Module,
    teachers: list[TeacherCost],
    loader: DataLoader,
    *,
    distilled_batches: int,
    val_batches: int,
) -> EpochCost:
    """One epoch's cost (``EpochCost``): ``loader``'s batches per scratch epoch, the distilled
    student's (labelled and transfer set together) with every teacher scoring each of them,
    and the validation batches (as many as training batches cost forward passes: an estimate on
    the safe side)."""
    batches = [to_device(batch, "cpu") for _, batch in zip(range(MEASURED_STEPS + 1), loader)]
    labelled = len(loader)
    step = step_seconds(student, batches)
    forward = step_seconds(student, batches, train=False)
    students = labelled * step + distilled_batches * step + 2 * val_batches * forward
    own = []
    for teacher in teachers:
        scoring = step_seconds(teacher.model, batches, train=False)
        students += distilled_batches * scoring
        trained = teacher.batches * step_seconds(teacher.model, batches) + val_batches * scoring
        own.append(trained if teacher.trained else 0.0)
    return EpochCost(students, tuple(own))


def budget_epochs(
    budget: float, cost: EpochCost, *, teacher_epochs: list[int | None]
) -> tuple[int, str]:
    """(epochs, why) within ``budget`` seconds. ``teacher_epochs``, one per teacher of
    ``cost``: the epochs it trains first, or None where it trains as many as the students."""
    fixed = sum(e * c for e, c in zip(teacher_epochs, cost.teachers) if e is not None)
    following = sum(c for e, c in zip(teacher_epochs, cost.teachers) if e is None)
    per_epoch = cost.students + following
    low, high = BUDGET_EPOCHS
    epochs = min(max(math.floor((budget - fixed) / per_epoch), low), high)
    trained = sum(1 for c in cost.teachers if c)
    whose = "the teacher's" if trained == 1 else f"{trained} teachers'"
    why = (
        f"an epoch measured {per_epoch:.2g} s (both students"
        + (", the teachers" if len(cost.teachers) > 1 and following else "")
        + (", the teacher" if len(cost.teachers) == 1 and following else "")
        + ")"
        + (f" after {fixed:.2g} s of {whose} own epochs" if fixed else "")
        + f"; train.time_budget={budget:g} s holds {epochs}, within {low}-{high} epochs"
    )
    if epochs * per_epoch + fixed > budget:
        why += " (more than the budget: lower the data, the models or the batch)"
    return epochs, why
