"""``fit`` and ``evaluate``: an ordinary PyTorch loop made device- and scale-agnostic by
Hugging Face Accelerate (``prepare``, ``backward``, ``gather_for_metrics``, main-process logging).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.checkpoint import (
    load_training_state,
    restore_training_state,
    save_training_state,
    set_rng_state,
)
from kdistill.distiller import Distiller, Teacher, call_model
from kdistill.errors import UserError
from kdistill.progress import FiniteWatch, NonFiniteLossError, TrainingProgress  # noqa: F401 (re-exported)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
POSTFIX_SECONDS = 2.0  # how often the progress bar shows the running loss


def make_accelerator(
    device: str = "auto", mixed_precision: str = "no", *, deterministic: bool = False,
) -> Accelerator:
    """An Accelerator on the requested device. ``Accelerator()`` alone would silently pick the
    GPU when present; ``cpu=True`` is required to stay on the CPU (and to run without CUDA).

    ``deterministic`` selects deterministic kernels (``use_deterministic_algorithms``), before
    CUDA starts: see ``use_deterministic_kernels``.
    """
    if deterministic:
        use_deterministic_kernels()
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda: no CUDA GPU is visible here; use train.device=auto or cpu")
    if mixed_precision == "fp16" and use_cpu:
        # fp16 needs a gradient scaler and GPU kernels; bf16 has float32's range and runs on CPUs.
        raise UserError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 on the CPU")
    # Accelerate keeps its state per process and refuses a second Accelerator with another
    # precision; one process may run several recipes (tuning, notebooks, tests), so start over.
    # The process group (PartialState) is kept.
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)
    refuse_sharded(accelerator)
    return accelerator


def use_deterministic_kernels() -> None:
    """Deterministic kernels everywhere; call it before the first CUDA matmul.

    cuBLAS needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its handle is
    created) or it refuses. A few CUDA backward kernels have no deterministic version at all,
    among them ``adaptive_avg_pool2d`` (the zoo's global-average-pool heads, AT's pooling) and
    bilinear ``interpolate``; refusing them would refuse every CNN, so on CUDA they run and
    PyTorch warns once per op, naming it (``warn_only``). The rest of the run is bit-identical
    across reruns. On the CPU every kernel has a deterministic version: strict.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False


SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def refuse_sharded(accelerator: Accelerator) -> None:
    """FSDP, DeepSpeed and Megatron shard the model: kdistill's checkpoints, evaluation and
    teacher are not ready for it yet (they read the unwrapped, whole model on one rank)."""
    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if kind in SHARDED:
        raise UserError(
            f"distributed type {kind} shards the model, which kdistill does not support yet; "
            "launch plain data parallelism (torchrun, or accelerate launch without --use_fsdp / "
            "--use_deepspeed)"
        )


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
        # A LambdaLR (absolute factor per step) rather than MultiStepLR: its state is plain
        # numbers, so checkpoints stay JSON + tensors.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: gamma ** sum(step >= m for m in milestones)
        )
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"schedule {name!r}: choose from {', '.join(SCHEDULES)}")


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, accelerator: Accelerator | None = None):
    """Logits and targets of a whole split, gathered across processes without duplicates."""
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device
    # The run's precision (autocast), and results kept on the device until the split is done:
    # one copy to the host, not one synchronisation per batch.
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    all_logits, all_targets = [], []
    with autocast:
        for batch in loader:
            batch = _to_device(batch, device)
            logits = call_model(model, batch["input"]).float()
            targets = batch["target"]
            if accelerator is not None:
                logits, targets = accelerator.gather_for_metrics((logits, targets))
            all_logits.append(logits)
            all_targets.append(targets)
    model.train(was_training)
    return torch.cat(all_logits).cpu(), torch.cat(all_targets).cpu()


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
    """Selects the epoch's augmentation draws (``Augmented``). Accelerate's loader re-sets its
    dataset's epoch to its own iteration counter at every ``__iter__``, so set it there: a
    resumed run then draws the same views as an uninterrupted one."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


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
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    batch_transform: Callable[[dict], dict] | None = None,
    finite_check_every: int = 200,
) -> list[dict]:
    """Train ``distiller`` for ``epochs``; returns one record per epoch (also passed to ``log``).

    Each record holds the epoch means of ``loss`` and every ``loss/<term>``, the training
    accuracy (classification), ``val/<metric>`` from ``evaluate_fn`` on ``val_loader`` when
    given, the learning rate and the epoch's seconds.

    With ``checkpoint`` set, the complete training state (weights, optimizer, scheduler, every
    random generator, the data order and the position in it) is written atomically there at the
    end of every epoch and every ``checkpoint_every`` steps; ``resume=True`` continues from it,
    giving the same result as an uninterrupted run (bit for bit in deterministic mode). Records
    of epochs finished before the checkpoint are not returned again.

    ``batch_transform`` (e.g. ``kdistill.sampling.OnPolicy``) rewrites each training batch, on
    the device, before the teacher and the student see it.

    A NaN or inf loss raises ``NonFiniteLossError`` naming the first bad step and its terms. It
    is watched on the device and read back every ``finite_check_every`` steps, before every
    checkpoint and at the end of every epoch: a read costs a host-device synchronisation, so
    the loop makes none of its own per step.
    """
    accelerator = accelerator or make_accelerator()
    if distiller.needs_teacher and teacher is None:
        raise ValueError("the distiller's terms compare with a teacher: pass teacher=")
    # The sampler's generator fixes the data order; saving its state at the start of each epoch
    # lets a resumed run replay the same order. Accelerate keeps this very object in use.
    order = getattr(train_loader, "generator", None)
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = make_schedule(opt, schedule, epochs * len(train_loader))
    model, opt, train_loader, sched = accelerator.prepare(distiller, opt, train_loader, sched)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    if teacher is not None:
        teacher.to(accelerator.device)  # placed on the device, never wrapped for DDP
    inner = accelerator.unwrap_model(model)

    state = TrainingProgress()
    restored_rng = None
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        tensors, meta = load_training_state(checkpoint)
        restored = restore_training_state(tensors, meta, model=inner, optimizer=opt, scheduler=sched)
        state = TrainingProgress.from_saved(meta["progress"], restored)
        restored_rng = (tensors, meta["rng"])

    watch = FiniteWatch(finite_check_every)

    def save() -> None:
        if checkpoint is None:
            return
        watch.check(epoch)  # never save a state that went non-finite
        if accelerator.is_main_process:
            progress_meta, progress_tensors = state.to_saved()
            save_training_state(
                checkpoint, model=inner, optimizer=opt, scheduler=sched,
                progress=progress_meta, progress_tensors=progress_tensors,
            )
        accelerator.wait_for_everyone()

    history = []
    for epoch in range(state.epoch, epochs + 1):
        if state.order_state is None:
            state.start_epoch(epoch, order.get_state() if order is not None else None)
        elif order is not None:
            order.set_state(state.order_state)  # a resumed run replays this epoch's shuffle
        inner.epoch = epoch
        _set_epoch(train_loader, epoch)
        if hasattr(teacher, "set_epoch"):
            teacher.set_epoch(epoch)  # a cached teacher serves this epoch's augmented view
        model.train()
        started = time.perf_counter()
        bar = tqdm(
            train_loader, desc=f"{phase} {epoch}/{epochs}", leave=False, dynamic_ncols=True,
            disable=not (progress and accelerator.is_local_main_process) or None,
        )
        shown_at = started
        for position, batch in enumerate(bar):
            if position < state.step_in_epoch:
                continue  # already trained on before the checkpoint: same batches, skipped
            if restored_rng is not None:
                # Dropout and friends continue from where the interrupted run stood.
                set_rng_state(*restored_rng)
                restored_rng = None
            if batch_transform is not None:
                batch = batch_transform(batch)
            teacher_out = None
            if inner.needs_teacher:
                with accelerator.autocast():  # the teacher in the run's precision, like the student
                    teacher_out = teacher(batch)
            out = model(batch, teacher_out)
            watch.observe(out, state.global_step)
            accelerator.backward(out["loss"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state.add(out, batch)
            if watch.due(state.global_step):
                watch.check(epoch)
            if checkpoint_every and state.global_step % checkpoint_every == 0:
                save()
            if not bar.disable and time.perf_counter() - shown_at > POSTFIX_SECONDS:
                # Reading the running loss syncs the device: by the clock, not every n steps.
                bar.set_postfix(loss=f"{state.mean('loss'):.4f}")
                shown_at = time.perf_counter()
        watch.check(epoch)
        record = {"phase": phase, "epoch": epoch, "step": state.global_step}
        record.update(state.epoch_means())
        if val_loader is not None:
            val = evaluate_fn(inner.student, val_loader, accelerator)
            record.update({f"val/{k}": v for k, v in val.items() if k != "n"})
        record["lr"] = sched.get_last_lr()[0]
        record["seconds"] = time.perf_counter() - started + state.carried_seconds
        history.append(record)
        if accelerator.is_main_process:
            # Logged before the checkpoint moves on: a crash in between replays this epoch's
            # record (the resumed run drops records its checkpoint does not cover).
            if log:
                log(record)
            if progress:
                shown = [k for k in record if k == "train/accuracy" or k.startswith("val/")]
                text = " ".join(f"{k} {record[k]:.4f}" for k in shown)
                tqdm.write(f"{phase} epoch {epoch}/{epochs}: loss {record['loss']:.4f} {text} ({record['seconds']:.1f}s)")
        state.start_epoch(epoch + 1, order.get_state() if order is not None else None)
        save()  # the epoch is complete: a crash from here on resumes at the next one
    # The accelerator outlives this phase (the pipeline trains several with one): drop its
    # references to the wrapped model, optimizer state and loaders so their memory is freed.
    accelerator.free_memory()
    return history
