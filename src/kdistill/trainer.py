"""``fit`` and ``evaluate``: an ordinary PyTorch loop made device- and scale-agnostic by
Hugging Face Accelerate (``prepare``, ``backward``, ``gather_for_metrics``, main-process logging).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.distiller import Distiller, Teacher, call_model
from kdistill.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")


class NonFiniteLossError(UserError):
    """The loss became NaN or inf; the message names the step and the term."""


def make_accelerator(device: str = "auto", mixed_precision: str = "no") -> Accelerator:
    """An Accelerator on the requested device. ``Accelerator()`` alone would silently pick the
    GPU when present; ``cpu=True`` is required to stay on the CPU (and to run without CUDA)."""
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def make_optimizer(
    parameters, name: str = "adam", *, lr: float = 1e-3, weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    raise ValueError(f"optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, *, step_every: int = 0,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule. ``step`` multiplies the rate by ``gamma`` every ``step_every`` steps
    (default: at 1/2 and 3/4 of training, as in the CIFAR recipes)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
        )
    if name == "step":
        milestones = (
            list(range(step_every, total_steps, step_every)) if step_every
            else [total_steps // 2, total_steps * 3 // 4]
        )
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=gamma)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"schedule {name!r}: choose from {', '.join(SCHEDULES)}")


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, accelerator: Accelerator | None = None):
    """Logits and targets of a whole split, gathered across processes without duplicates."""
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device
    all_logits, all_targets = [], []
    for batch in loader:
        batch = _to_device(batch, device)
        logits = call_model(model, batch["input"]).float()
        targets = batch["target"]
        if accelerator is not None:
            logits, targets = accelerator.gather_for_metrics((logits, targets))
        all_logits.append(logits.cpu())
        all_targets.append(targets.cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator | None = None) -> dict:
    """Accuracy (a fraction) and mean cross-entropy of ``model`` on a split."""
    logits, targets = predict(model, loader, accelerator)
    return {
        "accuracy": (logits.argmax(1) == targets).float().mean().item(),
        "loss": F.cross_entropy(logits, targets).item(),
        "n": len(targets),
    }


def _to_device(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """Selects the epoch's augmentation draws (``Augmented``) wherever the dataset sits."""
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _check_finite(out: dict[str, Tensor], step: int, epoch: int) -> None:
    if torch.isfinite(out["loss"]):
        return
    bad = [k.removeprefix("loss/") for k, v in out.items() if k.startswith("loss/") and not torch.isfinite(v)]
    raise NonFiniteLossError(
        f"loss became {out['loss'].item()} at epoch {epoch}, step {step} in term(s) "
        f"{', '.join(bad) or '?'}: lower train.lr, check the inputs for extreme values, "
        "or lower that term's weight or temperature"
    )


def fit(
    distiller: Distiller,
    train_loader: DataLoader,
    *,
    teacher: Teacher | None = None,
    val_loader: DataLoader | None = None,
    epochs: int = 10,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "cosine",
    accelerator: Accelerator | None = None,
    log: Callable[[dict], None] | None = None,
    phase: str = "student",
    progress: bool = True,
    evaluate_fn: Callable[..., dict] = evaluate,
) -> list[dict]:
    """Train ``distiller`` for ``epochs``; returns one record per epoch (also passed to ``log``).

    Each record holds the epoch means of ``loss`` and every ``loss/<term>``, the training
    accuracy (classification), ``val/<metric>`` from ``evaluate_fn`` on ``val_loader`` when
    given, the learning rate and the epoch's seconds.
    """
    accelerator = accelerator or make_accelerator()
    if distiller.needs_teacher and teacher is None:
        raise ValueError("the distiller's terms compare with a teacher: pass teacher=")
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = make_schedule(opt, schedule, epochs * len(train_loader))
    model, opt, train_loader, sched = accelerator.prepare(distiller, opt, train_loader, sched)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    if teacher is not None:
        teacher.to(accelerator.device)  # placed on the device, never wrapped for DDP
    inner = accelerator.unwrap_model(model)

    history = []
    step = 0
    for epoch in range(1, epochs + 1):
        inner.epoch = epoch
        _set_epoch(train_loader, epoch)
        model.train()
        sums: dict[str, Tensor] = defaultdict(float)
        seen, correct = 0, 0
        classifying = False
        started = time.perf_counter()
        bar = tqdm(
            train_loader, desc=f"{phase} {epoch}/{epochs}", leave=False, dynamic_ncols=True,
            disable=not (progress and accelerator.is_local_main_process) or None,
        )
        for batch in bar:
            teacher_out = teacher(batch) if inner.needs_teacher else None
            out = model(batch, teacher_out)
            _check_finite(out, step, epoch)
            accelerator.backward(out["loss"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            # Running sums stay tensors: .item() every step would sync a GPU each time.
            n = len(batch["target"])
            seen += n
            classifying = out["logits"].dim() == 2 and batch["target"].dim() == 1
            if classifying:
                correct = correct + (out["logits"].detach().argmax(-1) == batch["target"]).sum()
            for key, value in out.items():
                if key == "loss" or key.startswith("loss/"):
                    sums[key] = sums[key] + value.detach().float() * n
            if step % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{sums['loss'].item() / seen:.4f}")
        record = {"phase": phase, "epoch": epoch, "step": step}
        record.update({key: float(total) / seen for key, total in sums.items()})
        if classifying:
            record["train/accuracy"] = float(correct) / seen
        if val_loader is not None:
            val = evaluate_fn(inner.student, val_loader, accelerator)
            record.update({f"val/{k}": v for k, v in val.items() if k != "n"})
        record["lr"] = sched.get_last_lr()[0]
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if accelerator.is_main_process:
            if log:
                log(record)
            if progress:
                shown = [k for k in record if k == "train/accuracy" or k.startswith("val/")]
                text = " ".join(f"{k} {record[k]:.4f}" for k in shown)
                tqdm.write(f"{phase} epoch {epoch}/{epochs}: loss {record['loss']:.4f} {text} ({record['seconds']:.1f}s)")
    return history
