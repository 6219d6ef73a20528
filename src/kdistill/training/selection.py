"""What the loop keeps an eye on while it trains, each without a host synchronisation per step:
where it stands (``TrainingProgress``: the epoch's running sums and the position in the data,
saved in every checkpoint), a loss that stopped being finite (``FiniteWatch``), and which epoch
to keep (``EarlyStopping``, ``Monitor``, ``BestWeights``: the validation metric's best epoch,
the rule to stop, and that epoch's weights)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from kdistill.data.transfer import UNLABELLED
from kdistill.errors import UserError
from kdistill.io.tensors import load_tensors, save_tensors
from kdistill.training import sharding


class NonFiniteLossError(UserError):
    """The loss became NaN or inf; the message names the step and the term."""


class FiniteWatch:
    """Watches the loss for NaN and inf on the device, without a host sync per step.

    A step only stacks its loss and terms into one tensor (one small op: on a GPU every op is a
    kernel launch the host pays for); every ``FOLD`` steps, and before ``check``, the stacked
    steps are folded into device tensors that remember the first bad step, its value and its
    terms. ``check`` reads them back (one sync) and raises. The loop checks every ``every``
    steps, before every checkpoint and at the end of every epoch, so a bad run stops within
    ``every`` steps and never saves a non-finite state.
    """

    FOLD = 64  # steps held before folding: bounds the memory of the pending tensors

    def __init__(self, every: int):
        self.every = every
        self.first_step: Tensor | None = None
        self.value: Tensor | None = None
        self.bad_terms: Tensor | None = None
        self.terms: list[str] = []
        self.pending: list[tuple[int, Tensor]] = []

    def observe(self, out: dict[str, Tensor], step: int) -> None:
        terms = [k for k in out if k.startswith("loss/")]
        if terms != self.terms:
            self.fold()
            self.terms, self.first_step = terms, None
        self.pending.append(
            (step, torch.stack([out["loss"].detach(), *(out[k].detach() for k in terms)]))
        )
        if len(self.pending) >= self.FOLD:
            self.fold()

    def fold(self) -> None:
        """Fold the pending steps into the first-bad-step record, on the device."""
        if not self.pending:
            return
        steps = torch.tensor([step for step, _ in self.pending])
        values = torch.stack([v for _, v in self.pending]).float()  # (steps, 1 + terms)
        self.pending = []
        if self.first_step is None:
            self.first_step = torch.full((), -1, dtype=torch.int64, device=values.device)
            self.value = values.new_zeros(())
            self.bad_terms = torch.zeros(
                values.shape[1] - 1, dtype=torch.bool, device=values.device
            )
        bad = ~torch.isfinite(values[:, 0])
        row = bad.int().argmax()  # the first bad step of these, or 0 when none is
        newly_bad = bad.any() & (self.first_step < 0)
        self.first_step = torch.where(newly_bad, steps.to(values.device)[row], self.first_step)
        self.value = torch.where(newly_bad, values[row, 0], self.value)
        self.bad_terms = torch.where(newly_bad, ~torch.isfinite(values[row, 1:]), self.bad_terms)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def check(self, epoch: int) -> None:
        self.fold()
        if self.first_step is None or int(self.first_step) < 0:
            return
        bad = [
            name.removeprefix("loss/")
            for name, flag in zip(self.terms, self.bad_terms.tolist())
            if flag
        ]
        raise NonFiniteLossError(
            f"loss became {float(self.value)} at epoch {epoch}, step {int(self.first_step)} in "
            f"term(s) {', '.join(bad) or '?'}: lower train.lr, check the inputs for extreme "
            "values, or lower that term's weight or temperature"
        )


class TrainingProgress:
    """Where training stands: epoch, step, data order, and the epoch's running sums."""

    def __init__(self):
        self.epoch = 1
        self.step_in_epoch = 0
        self.global_step = 0
        self.order_state: Tensor | None = None
        self._sums: dict[str, Tensor] = {}
        self.seen = 0
        # [right, labelled]: a transfer set's samples carry no label to be right about.
        self._correct = torch.zeros(2, dtype=torch.int64)
        self.classifying = False
        self.carried_seconds = 0.0
        self._started = time.perf_counter()
        self.best: dict = {"value": None, "epoch": 0, "stale": 0}  # see Monitor
        # Steps not yet added to the sums: (keys, batch size, stacked values, correct or None).
        self._pending: list[tuple[tuple[str, ...], int, Tensor, Tensor | None]] = []

    def start_epoch(self, epoch: int, order_state: Tensor | None) -> None:
        self.epoch, self.step_in_epoch, self.order_state = epoch, 0, order_state
        self._sums, self.seen, self.classifying, self._pending = {}, 0, False, []
        self._correct = torch.zeros(2, dtype=torch.int64)
        self.carried_seconds = 0.0
        self._started = time.perf_counter()

    def add(self, out: dict[str, Tensor], batch) -> None:
        # Running sums stay tensors: .item() every step would sync a GPU each time. A step only
        # stacks its numbers (one op, where adding each would launch a few per number).
        n = len(batch["target"])
        self.seen += n
        self.step_in_epoch += 1
        self.global_step += 1
        self.classifying = out["logits"].dim() == 2 and batch["target"].dim() == 1
        hits = None
        if self.classifying:
            target = batch["target"]
            right = (out["logits"].detach().argmax(-1) == target).sum()
            hits = torch.stack([right, (target != UNLABELLED).sum()])
        # A batch transform's own numbers ("metric/...", e.g. on-policy GKD's generated share) too.
        keys = tuple(k for k in [*out, *batch] if k == "loss" or k.startswith(("loss/", "metric/")))
        values = torch.stack(
            [(out[k] if k in out else batch[k]).detach().reshape(()) for k in keys]
        )
        self._pending.append((keys, n, values, hits))
        # Folded at fixed positions of the epoch (and at checkpoints and the epoch's end, which
        # read the sums), never by the clock: where a fold falls changes the float rounding of
        # the sums, and a resumed run must log the same numbers as an uninterrupted one.
        if self.step_in_epoch % FiniteWatch.FOLD == 0:
            self._fold()

    def _fold(self) -> None:
        """Add the pending steps to the sums (a few ops per run of steps with the same keys)."""
        pending, self._pending = self._pending, []
        start = 0
        while start < len(pending):
            keys = pending[start][0]
            end = start
            while end < len(pending) and pending[end][0] == keys:
                end += 1
            run = pending[start:end]
            values = torch.stack([v for _, _, v, _ in run]).float()
            weights = torch.tensor(
                [n for _, n, _, _ in run], dtype=torch.float32, device=values.device
            )
            totals = (values * weights[:, None]).sum(0)
            for key, total in zip(keys, totals):
                self._sums[key] = self._sums[key] + total if key in self._sums else total
            hits = [h for _, _, _, h in run if h is not None]
            if hits:
                self._correct = self._correct.to(hits[0].device) + torch.stack(hits).sum(0)
            start = end

    @property
    def sums(self) -> dict[str, Tensor]:
        self._fold()
        return self._sums

    @property
    def correct(self) -> Tensor:
        self._fold()
        return self._correct

    def mean(self, key: str) -> float:
        """The running mean of ``key`` so far, for the progress bar: read without folding (the
        bar reads by the clock)."""
        pending = [v[keys.index(key)].float() * n for keys, n, v, _ in self._pending if key in keys]
        total = float(self._sums[key]) if key in self._sums else 0.0
        return (total + (float(torch.stack(pending).sum()) if pending else 0.0)) / max(self.seen, 1)

    def epoch_means(self) -> dict[str, float]:
        means = {key: float(total) / self.seen for key, total in self.sums.items()}
        right, labelled = self.correct.tolist()
        if self.classifying and labelled:
            means["train/accuracy"] = right / labelled
        return means

    def to_saved(self) -> tuple[dict, dict[str, Tensor]]:
        tensors = {f"sum.{k}": v.cpu() for k, v in self.sums.items()}
        tensors["correct"] = self.correct.cpu()
        if self.order_state is not None:
            tensors["order"] = self.order_state
        meta = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "seen": self.seen,
            "classifying": self.classifying,
            "best": self.best,
            "seconds": time.perf_counter() - self._started + self.carried_seconds,
        }
        return meta, tensors

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, Tensor]) -> TrainingProgress:
        state = cls()
        state.epoch, state.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        state.global_step, state.seen, state.classifying = (
            meta["global_step"],
            meta["seen"],
            meta["classifying"],
        )
        state.carried_seconds = meta["seconds"]
        state.best = meta.get("best", state.best)
        state._sums = {
            k.removeprefix("sum."): v for k, v in tensors.items() if k.startswith("sum.")
        }
        correct = tensors["correct"]
        if correct.dim() == 0:  # saved before the labelled count was kept: every sample was
            correct = torch.stack([correct, torch.tensor(meta["seen"])])
        state._correct = correct
        state.order_state = tensors.get("order")
        return state


# Metrics that improve downwards, when the caller does not say (the tasks' own scores do).
LOWER_IS_BETTER = ("loss", "perplexity", "rmse", "error")


@dataclass
class EarlyStopping:
    """Which validation metric picks the best epoch, and when training stops.

    ``metric``: a validation metric (``accuracy`` and ``val/accuracy`` are the same; ``loss`` is
    the validation loss, never the training loss); None: the validation's first metric.
    Training stops once ``patience`` epochs in a row fail to beat the best by more than
    ``min_delta``; ``patience=None`` never stops (best epoch only). A NaN is never the best.
    """

    metric: str | None = None
    patience: int | None = 3
    min_delta: float = 0.0
    higher_is_better: bool | None = None


class Monitor:
    """Follows ``EarlyStopping.metric`` over the epoch records; its state (best value, its
    epoch, epochs since) lives in ``TrainingProgress.best`` so a resumed run continues it."""

    def __init__(self, rule: EarlyStopping, state: TrainingProgress):
        self.rule, self.progress = rule, state

    @property
    def best_epoch(self) -> int:
        return self.progress.best["epoch"]

    def key(self, record: dict) -> str:
        metric = self.rule.metric
        if metric is None:
            found = [k for k in record if k.startswith("val/")]
            if not found:
                raise UserError(
                    "early stopping and keep=best need validation metrics: give a validation split"
                )
            return found[0]
        # The record holds the epoch's training "loss" too: a bare name is always val/<name>.
        key = metric if metric.startswith("val/") else f"val/{metric}"
        if key not in record:
            shown = (
                ", ".join(k for k in record if k.startswith("val/"))
                or "none: give a validation split"
            )
            raise UserError(
                f"early stopping metric {metric!r} is not "
                f"measured; the validation metrics are {shown}"
            )
        return key

    def update(self, record: dict) -> bool:
        """Take an epoch's record; True when it is the best so far."""
        key = self.key(record)
        higher = self.rule.higher_is_better
        if higher is None:
            higher = not any(word in key for word in LOWER_IS_BETTER)
        value, best = float(record[key]), self.progress.best
        # NaN compares false with everything: kept as the best, it would never be beaten.
        improved = not math.isnan(value) and (
            best["value"] is None
            or ((value - best["value"] if higher else best["value"] - value) > self.rule.min_delta)
        )
        if improved:
            best.update(value=value, epoch=record["epoch"], stale=0)
            return True
        best["stale"] += 1
        return False

    def should_stop(self) -> bool:
        patience = self.rule.patience
        return patience is not None and self.progress.best["stale"] >= patience


def selection_rule(
    train,
    headline: str,
    higher_is_better: dict | None = None,
) -> EarlyStopping | None:
    """The rule that picks epochs for a ``TrainConfig`` (``early_stopping``, ``keep``): on the
    task's ``headline`` validation metric unless the settings name another; None: the last
    epoch, never stopping early."""
    rule = train.early_stopping
    if rule is None and train.keep == "last":
        return None
    metric = (rule and rule.metric) or headline
    higher = (higher_is_better or {}).get(metric.removeprefix("val/"))
    if rule is None:  # keep=best alone: the best epoch, never stopping early
        return EarlyStopping(metric=metric, patience=None, higher_is_better=higher)
    return EarlyStopping(
        metric=metric,
        patience=rule.patience,
        min_delta=rule.min_delta,
        higher_is_better=higher,
    )


def best_weights_path(state_path: str | Path) -> Path:
    return Path(state_path).with_suffix(".best.safetensors")


class BestWeights:
    """The best epoch's student weights: a copy in host memory, and beside the training state
    on disk (when checkpointing) so a resumed run still ends with them. A sharded student's
    are gathered whole onto the main process, and handed back out from it."""

    def __init__(self, student, state_path, accelerator):
        self.student, self.accelerator = student, accelerator
        self.sharded = isinstance(student, FSDPModule)
        self.path = best_weights_path(state_path) if state_path is not None else None
        self.weights: dict[str, Tensor] | None = None

    def remember(self) -> None:
        if self.sharded:
            self.weights = sharding.whole_weights(self.student)  # empty but on the main process
        else:
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()
            }
        if self.path is not None and self.accelerator.is_main_process:
            save_tensors(self.path, self.weights)

    def restore(self) -> None:
        if self.path is not None and self.path.is_file():
            self.weights, _ = load_tensors(self.path, what="best weights", expect_digest=True)

    def load(self) -> None:
        if self.weights is not None and self.sharded:
            sharding.load_weights_from_main(self.student, self.weights)
        elif self.weights is not None:
            self.student.load_state_dict(self.weights)
