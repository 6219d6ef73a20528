"""Where a training loop stands, kept on the device: the epoch's running sums and the position
in the data (``TrainingProgress``, saved in every checkpoint), and the watch for a loss that
stopped being finite (``FiniteWatch``), both without a host synchronisation per step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdistill.checkpoint import load_tensors
from kdistill.errors import UserError
from kdistill.weights import save_weights


class NonFiniteLossError(UserError):
    """The loss became NaN or inf; the message names the step and the term."""


class FiniteWatch:
    """Watches the loss for NaN and inf on the device, without a host sync per step.

    Each step folds "is this loss finite" into device tensors that remember the first bad step,
    its value and its terms; ``check`` reads them back (one sync) and raises. The trainer checks
    every ``every`` steps, before every checkpoint and at the end of every epoch, so a bad run
    stops within ``every`` steps and never saves a non-finite state.
    """

    def __init__(self, every: int):
        self.every = every
        self.first_step: Tensor | None = None
        self.value: Tensor | None = None
        self.bad_terms: Tensor | None = None
        self.terms: list[str] = []

    def observe(self, out: dict[str, Tensor], step: int) -> None:
        loss = out["loss"].detach().float()
        terms = [k for k in out if k.startswith("loss/")]
        term_values = torch.stack([out[k].detach().float() for k in terms]) if terms else loss.new_zeros(0)
        if self.first_step is None or terms != self.terms:
            self.terms = terms
            self.first_step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.value = loss.new_zeros(())
            self.bad_terms = torch.zeros(len(terms), dtype=torch.bool, device=loss.device)
        newly_bad = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(newly_bad, step, self.first_step)
        self.value = torch.where(newly_bad, loss, self.value)
        self.bad_terms = torch.where(newly_bad, ~torch.isfinite(term_values), self.bad_terms)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def check(self, epoch: int) -> None:
        if self.first_step is None or int(self.first_step) < 0:
            return
        bad = [name.removeprefix("loss/") for name, flag in zip(self.terms, self.bad_terms.tolist()) if flag]
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
        self.sums: dict[str, Tensor] = {}
        self.seen = 0
        self.correct = torch.zeros((), dtype=torch.int64)
        self.classifying = False
        self.carried_seconds = 0.0
        self._started = time.perf_counter()
        self.best: dict = {"value": None, "epoch": 0, "stale": 0}  # see Monitor

    def start_epoch(self, epoch: int, order_state: Tensor | None) -> None:
        self.epoch, self.step_in_epoch, self.order_state = epoch, 0, order_state
        self.sums, self.seen, self.classifying = {}, 0, False
        self.correct = torch.zeros((), dtype=torch.int64)
        self.carried_seconds = 0.0
        self._started = time.perf_counter()

    def add(self, out: dict[str, Tensor], batch) -> None:
        # Running sums stay tensors: .item() every step would sync a GPU each time.
        n = len(batch["target"])
        self.seen += n
        self.step_in_epoch += 1
        self.global_step += 1
        self.classifying = out["logits"].dim() == 2 and batch["target"].dim() == 1
        if self.classifying:
            hits = (out["logits"].detach().argmax(-1) == batch["target"]).sum()
            self.correct = self.correct.to(hits.device) + hits
        # A batch transform's own numbers ("metric/...", e.g. on-policy GKD's generated share) too.
        for key, value in [*out.items(), *batch.items()]:
            if key == "loss" or key.startswith(("loss/", "metric/")):
                value = value.detach().float() * n
                self.sums[key] = self.sums[key] + value if key in self.sums else value

    def mean(self, key: str) -> float:
        return self.sums[key].item() / max(self.seen, 1)

    def epoch_means(self) -> dict[str, float]:
        means = {key: float(total) / self.seen for key, total in self.sums.items()}
        if self.classifying:
            means["train/accuracy"] = float(self.correct) / self.seen
        return means

    def to_saved(self) -> tuple[dict, dict[str, Tensor]]:
        tensors = {f"sum.{k}": v.cpu() for k, v in self.sums.items()}
        tensors["correct"] = self.correct.cpu()
        if self.order_state is not None:
            tensors["order"] = self.order_state
        meta = {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "seen": self.seen, "classifying": self.classifying, "best": self.best,
            "seconds": time.perf_counter() - self._started + self.carried_seconds,
        }
        return meta, tensors

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, Tensor]) -> TrainingProgress:
        state = cls()
        state.epoch, state.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        state.global_step, state.seen, state.classifying = meta["global_step"], meta["seen"], meta["classifying"]
        state.carried_seconds = meta["seconds"]
        state.best = meta.get("best", state.best)
        state.sums = {k.removeprefix("sum."): v for k, v in tensors.items() if k.startswith("sum.")}
        state.correct = tensors["correct"]
        state.order_state = tensors.get("order")
        return state


# Metrics that improve downwards, when the caller does not say (the tasks' own scores do).
LOWER_IS_BETTER = ("loss", "perplexity", "rmse", "error")


@dataclass
class EarlyStopping:
    """Which validation metric picks the best epoch, and when training stops.

    ``metric``: a key of the epoch record (``val/accuracy``; ``accuracy`` means the same);
    None: the validation's first metric. Training stops once ``patience`` epochs in a row fail to
    beat the best by more than ``min_delta``; ``patience=None`` never stops (best epoch only).
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
                raise UserError("early stopping and keep=best need validation metrics: give a validation split")
            return found[0]
        key = metric if metric.startswith("val/") or metric in record else f"val/{metric}"
        if key not in record:
            shown = ", ".join(k for k in record if k.startswith("val/")) or "none: give a validation split"
            raise UserError(f"early stopping metric {metric!r} is not measured; the validation metrics are {shown}")
        return key

    def update(self, record: dict) -> bool:
        """Take an epoch's record; True when it is the best so far."""
        key = self.key(record)
        higher = self.rule.higher_is_better
        if higher is None:
            higher = not any(word in key for word in LOWER_IS_BETTER)
        value, best = float(record[key]), self.progress.best
        improved = best["value"] is None or (
            (value - best["value"] if higher else best["value"] - value) > self.rule.min_delta
        )
        if improved:
            best.update(value=value, epoch=record["epoch"], stale=0)
            return True
        best["stale"] += 1
        return False

    def should_stop(self) -> bool:
        patience = self.rule.patience
        return patience is not None and self.progress.best["stale"] >= patience


def best_weights_path(state_path: str | Path) -> Path:
    return Path(state_path).with_suffix(".best.safetensors")


class BestWeights:
    """The best epoch's student weights: a copy in host memory, and beside the training state
    on disk (when checkpointing) so a resumed run still ends with them."""

    def __init__(self, student, state_path, accelerator):
        self.student, self.accelerator = student, accelerator
        self.path = best_weights_path(state_path) if state_path is not None else None
        self.weights: dict[str, Tensor] | None = None

    def remember(self) -> None:
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}
        if self.path is not None and self.accelerator.is_main_process:
            save_weights(self.student, self.path)

    def restore(self) -> None:
        if self.path is not None and self.path.is_file():
            self.weights, _ = load_tensors(self.path, what="best weights", expect_digest=True)

    def load(self) -> None:
        if self.weights is not None:
            self.student.load_state_dict(self.weights)
