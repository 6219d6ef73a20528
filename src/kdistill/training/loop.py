"""``train_loop``: an ordinary PyTorch loop made device- and scale-agnostic by Accelerate
(``prepare``, ``backward``, ``gather_for_metrics``, main-process logging). Its parts live beside
it in training/: the optimiser and schedule (optimization), the accelerator (acceleration), early
stopping and best weights (selection), the resumable state (checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdistill.distiller import Distiller, Teacher
from kdistill.errors import UserError
from kdistill.evaluation.classification import evaluate
from kdistill.training import sharding
from kdistill.training import shards as sharded_state
from kdistill.training.acceleration import make_accelerator
from kdistill.training.checkpoint import (
    load_training_state,
    restore_training_state,
    save_training_state,
    set_rng_state,
)
from kdistill.training.host_memory import keep_freed_memory
from kdistill.training.memory_format import channels_last
from kdistill.training.optimization import (
    Optimization,
    accumulation_windows,
    make_optimizer,
    make_schedule,
    parameter_groups,
)
from kdistill.training.selection import (
    BestWeights,
    EarlyStopping,
    FiniteWatch,
    Monitor,
    TrainingProgress,
)

POSTFIX_SECONDS = 2.0  # how often the progress bar shows the running loss


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


KEEP = ("last", "best")


@dataclass
class Loop:
    """What happens around each step: the phase's name, validation, the batch transform, the
    loss watch, step-level logging, early stopping and which epoch's weights are kept.

    ``keep="best"`` ends training with the weights of the best epoch by ``early_stopping``'s
    metric (the validation's first metric when no rule is given); ``early_stopping`` stops once
    the metric has not improved for its ``patience`` epochs. Both need ``val_loader``.
    ``log_step`` receives a record (running means of every term, ``lr``, ``samples_per_s``)
    every ``log_every`` training steps, for trackers; ``log`` gets every epoch's.
    """

    phase: str = "student"
    evaluate_fn: Callable[..., dict] = evaluate
    batch_transform: Callable[[dict], dict] | None = None
    finite_check_every: int = 200
    log_every: int = 0
    log_step: Callable[[dict], None] | None = None
    early_stopping: EarlyStopping | None = None
    keep: str = "last"

    def __post_init__(self):
        if self.keep not in KEEP:
            raise ValueError(f"keep {self.keep!r}: choose from {', '.join(KEEP)}")

    def monitor_rule(self) -> EarlyStopping | None:
        if self.early_stopping is not None:
            return self.early_stopping
        return EarlyStopping(patience=None) if self.keep == "best" else None


@dataclass
class Checkpointing:
    """The complete training state (weights, optimizer, scheduler, every random generator,
    the data order and the position in it) is written atomically to ``path`` at the end of
    every epoch and every ``every`` steps; ``resume=True`` continues from it, giving the same
    result as an uninterrupted run (bit for bit in deterministic mode). With ``keep="best"``
    the best epoch's weights wait beside it (``best_weights_path``)."""

    path: str | Path | None = None
    every: int = 0
    resume: bool = False


def train_loop(
    distiller: Distiller,
    train_loader: DataLoader,
    *,
    teacher: Teacher | None = None,
    val_loader: DataLoader | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    optim: Optimization | None = None,
    loop: Loop | None = None,
    checkpointing: Checkpointing | None = None,
    accelerator: Accelerator | None = None,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``distiller`` for ``epochs`` at learning rate ``lr``; returns one record per epoch
    (also passed to ``log``). The rest comes in three groups: ``optim`` (``Optimization``:
    optimizer, schedule, warm-up, accumulation, clipping, weight decay), ``loop`` (``Loop``:
    phase name, validation, batch transform, early stopping, best epoch, step logging) and
    ``checkpointing`` (``Checkpointing``: resumable training state).

    Each record holds the epoch means of ``loss`` and every ``loss/<term>``, the training
    accuracy (classification), ``val/<metric>`` from ``loop.evaluate_fn`` on ``val_loader``
    when given, the learning rate, the samples seen and the epoch's seconds; with a monitor
    (early stopping or ``keep="best"``) also ``best_epoch``, and ``stopped_early`` on the last.
    Records of epochs finished before a resumed checkpoint are not returned again.

    ``loop.batch_transform`` (e.g. ``kdistill.training.sampling.OnPolicy``) rewrites each training
    batch, on the device, before the teacher and the student see it.

    A NaN or inf loss raises ``NonFiniteLossError`` naming the first bad step and its terms. It
    is watched on the device and read back every ``loop.finite_check_every`` steps, before every
    checkpoint and at the end of every epoch: a read costs a host-device synchronisation, so
    the loop makes none of its own per step.
    """
    optim, loop, checkpointing = (
        optim or Optimization(),
        loop or Loop(),
        checkpointing or Checkpointing(),
    )
    accelerator = accelerator or make_accelerator()
    # Before the optimizer and Accelerate see the parameters; handed back in the default layout
    # when training ends.
    with contextlib.ExitStack() as layouts:
        layouts.enter_context(keep_freed_memory())
        for module in (distiller.student, getattr(teacher, "module", None)):
            layouts.enter_context(channels_last(module, accelerator.device))
        if distiller.needs_teacher and teacher is None:
            raise ValueError("the distiller's terms compare with a teacher: pass teacher=")
        rule = loop.monitor_rule()
        if rule is not None and val_loader is None:
            raise UserError(
                "early stopping and keep=best choose epochs by "
                "a validation metric: give a validation split"
            )
        distiller, sharded = sharding.begin(accelerator, distiller, teacher, loop.batch_transform)
        # The sampler's generator fixes the data order; saving its state at the start of each epoch
        # lets a resumed run replay the same order. Accelerate keeps this very object in use.
        order = getattr(train_loader, "generator", None)
        opt = make_optimizer(
            parameter_groups(distiller, optim.weight_decay),
            optim.optimizer,
            lr=lr,
            weight_decay=optim.weight_decay,
            momentum=optim.momentum,
        )
        updates = epochs * math.ceil(len(train_loader) / optim.grad_accum)
        sched = make_schedule(opt, optim.schedule, updates, warmup_steps=optim.warmup(updates))
        # The loop weighs an accumulation window's batches itself (accumulation_windows), so
        # Accelerate must not divide the loss again; the accelerator outlives this phase.
        accelerator.gradient_accumulation_steps = 1
        model, opt, train_loader, sched = accelerator.prepare(distiller, opt, train_loader, sched)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
        if sharded:
            teacher = sharded.shard_teacher(accelerator)  # forward only: never in an optimizer
        elif teacher is not None:
            teacher.to(accelerator.device)  # placed on the device, never wrapped for DDP
        inner = accelerator.unwrap_model(model, keep_torch_compile=False)  # the Distiller itself

        checkpoint = checkpointing.path
        state = TrainingProgress()
        restored_rng = None
        if checkpointing.resume and checkpoint is not None and Path(checkpoint).is_file():
            tensors, meta = load_training_state(checkpoint)
            restored = restore_training_state(
                tensors,
                meta,
                model=inner,
                optimizer=opt.optimizer,
                scheduler=sched,
                processes=accelerator.num_processes,
                path=checkpoint,
            )
            state = TrainingProgress.from_saved(meta["progress"], restored)
            restored_rng = (tensors, meta["rng"])
            if hasattr(loop.batch_transform, "load_state_dict"):  # its own draws (OnPolicy)
                loop.batch_transform.load_state_dict(
                    {
                        k.removeprefix("transform."): v
                        for k, v in restored.items()
                        if k.startswith("transform.")
                    }
                )
        monitor = Monitor(rule, state) if rule is not None else None
        best = BestWeights(inner.student, checkpoint if loop.keep == "best" else None, accelerator)
        if loop.keep == "best" and checkpointing.resume:
            best.restore()

        watch = FiniteWatch(loop.finite_check_every)

        def prepare(batch):
            nonlocal restored_rng
            if restored_rng is not None:
                # Dropout and friends continue from where the interrupted run stood.
                set_rng_state(*restored_rng)
                restored_rng = None
            return batch if loop.batch_transform is None else loop.batch_transform(batch)

        def save() -> None:
            if checkpoint is None:
                return
            watch.check(epoch)  # never save a state that went non-finite
            folder = shards = None
            if sharded:
                # Each rank writes its own shards; the file below names them once all are down.
                folder, optimizer_state, digests = sharded_state.save_shards(
                    Path(checkpoint), inner, opt.optimizer
                )
                weights, shards = {}, {"folder": folder.name, "files": digests}
            else:
                weights, optimizer_state = sharding.state(inner, opt.optimizer, accelerator)
            if accelerator.is_main_process:
                previous = sharded_state.named_by(Path(checkpoint))
                progress_meta, progress_tensors = state.to_saved()
                if hasattr(loop.batch_transform, "state_dict"):
                    drawn = loop.batch_transform.state_dict()
                    progress_tensors.update({f"transform.{k}": v for k, v in drawn.items()})
                save_training_state(
                    checkpoint,
                    weights=weights,
                    optimizer_state=optimizer_state,
                    scheduler=sched,
                    progress=progress_meta,
                    progress_tensors=progress_tensors,
                    processes=accelerator.num_processes,
                    shards=shards,
                )
                if folder is not None or previous is not None:
                    sharded_state.remove_shards(Path(checkpoint), keep=folder, named=previous)
            accelerator.wait_for_everyone()

        history = []
        phase = loop.phase
        for epoch in range(state.epoch, epochs + 1):
            if monitor is not None and monitor.should_stop():
                break  # a resumed run that had already stopped early
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
            batches = train_loader
            if state.step_in_epoch:
                # Resumed mid-epoch: the sampler replays this epoch's order, and the batches trained
                # before the checkpoint are skipped by index, never loaded or augmented again.
                batches = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
            bar = tqdm(
                batches,
                desc=f"{phase} {epoch}/{epochs}",
                leave=False,
                dynamic_ncols=True,
                initial=state.step_in_epoch,
                total=len(train_loader),
                disable=not (progress and accelerator.is_local_main_process) or None,
            )
            shown_at = started
            windows = accumulation_windows(bar, optim.grad_accum, prepare, inner.counts)
            for batch, shares, update in windows:
                # Before the window's last batch DDP keeps each process's gradients (no all-reduce).
                with contextlib.nullcontext() if update else accelerator.no_sync(model):
                    teacher_out = None
                    if inner.needs_teacher:
                        with (
                            accelerator.autocast()
                        ):  # the teacher in the run's precision, like the student
                            teacher_out = teacher(batch)
                    out = model(batch, teacher_out, *([] if shares is None else [shares]))
                    watch.observe(out, state.global_step)
                    accelerator.backward(out["loss"] if shares is None else out["objective"])
                if update:
                    if optim.clip_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
                    opt.step()
                    sched.step()
                    # The wrapped optimizer's own zero_grad: Accelerate's inspects its signature
                    # on every call (~0.15 ms) to learn what this line already knows.
                    opt.optimizer.zero_grad(set_to_none=True)
                if sharded:
                    sharded.after_step()  # the teacher's gathered weights are freed
                state.add(out, batch)
                if watch.due(state.global_step):
                    watch.check(epoch)
                if checkpointing.every and state.global_step % checkpointing.every == 0 and update:
                    save()  # between updates only: accumulated gradients are not part of the state
                if (
                    loop.log_step
                    and loop.log_every
                    and state.global_step % loop.log_every == 0
                    and accelerator.is_main_process
                ):
                    loop.log_step(
                        _step_record(phase, epoch, state, sched, time.perf_counter() - started)
                    )
                if not bar.disable and time.perf_counter() - shown_at > POSTFIX_SECONDS:
                    # Reading the running loss syncs the device: by the clock, not every n steps.
                    bar.set_postfix(loss=f"{state.mean('loss'):.4f}")
                    shown_at = time.perf_counter()
            watch.check(epoch)
            agree_buffers(inner, accelerator)
            record = {"phase": phase, "epoch": epoch, "step": state.global_step}
            record.update(state.epoch_means())
            if val_loader is not None:
                val = loop.evaluate_fn(inner.student, val_loader, accelerator)
                record.update({f"val/{k}": v for k, v in val.items() if k != "n"})
            record["lr"] = sched.get_last_lr()[0]
            record["samples"] = state.seen
            record["seconds"] = time.perf_counter() - started + state.carried_seconds
            if monitor is not None:
                if monitor.update(record):
                    best.remember()
                record["best_epoch"] = monitor.best_epoch
                if monitor.should_stop():
                    record["stopped_early"] = True
            history.append(record)
            if accelerator.is_main_process:
                # Logged before the checkpoint moves on: a crash in between replays this epoch's
                # record (the resumed run drops records its checkpoint does not cover).
                if log:
                    log(record)
                if progress:
                    shown = [k for k in record if k == "train/accuracy" or k.startswith("val/")]
                    text = " ".join(f"{k} {record[k]:.4f}" for k in shown)
                    tqdm.write(
                        f"{phase} epoch {epoch}/{epochs}: loss {record['loss']:.4f} {text} "
                        f"({record['seconds']:.1f}s)"
                    )
            state.start_epoch(epoch + 1, order.get_state() if order is not None else None)
            save()  # the epoch is complete: a crash from here on resumes at the next one
        if loop.keep == "best":
            best.load()
        if sharded:
            sharded.finish(opt.optimizer)
        release(accelerator)
        return history


def agree_buffers(module: nn.Module, accelerator: Accelerator) -> None:
    """Give every process the main process's buffers (BatchNorm's running statistics).

    DDP copies them from rank 0 at the start of each forward pass, so after an epoch's last
    step every rank holds statistics of its own last batch: the model validated, kept as best,
    taught with and fingerprinted for a teacher cache would differ by rank (two ranks looking
    for two caches), and differ from the one rank 0 saves."""
    if accelerator.num_processes == 1:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def release(accelerator: Accelerator) -> None:
    """The accelerator outlives this phase (the pipeline trains several with one): drop its
    references to the wrapped model, optimizer state and loaders so their memory is freed.

    ``free_memory`` also runs a full ``gc.collect()``: 0.36 s per call in a process that has
    imported torch and transformers, 15 % of a short epoch of the tutorial's pair. On the CPU
    reference counting frees the phase's tensors as soon as these lists let go, so only a GPU,
    whose cached blocks are returned by ``empty_cache``, pays for it.
    """
    if accelerator.device.type != "cpu":
        accelerator.free_memory()
        return
    (
        accelerator._schedulers,
        accelerator._optimizers,
        accelerator._models,
        accelerator._dataloaders,
    ) = [], [], [], []
    accelerator.step = 0


def _step_record(phase: str, epoch: int, state: TrainingProgress, sched, seconds: float) -> dict:
    """Running means of the epoch so far (one device sync), for trackers every ``log_every``."""
    return {
        "phase": phase,
        "epoch": epoch,
        "step": state.global_step,
        **state.epoch_means(),
        "lr": sched.get_last_lr()[0],
        "samples_per_s": state.seen / max(seconds, 1e-9),
    }
