"""Where a training loop stands, kept on the device: the epoch's running sums and the position
in the data (``TrainingProgress``, saved in every checkpoint), and the watch for a loss that
stopped being finite (``FiniteWatch``), both without a host synchronisation per step."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from kdistill.errors import UserError


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
            "seen": self.seen, "classifying": self.classifying,
            "seconds": time.perf_counter() - self._started + self.carried_seconds,
        }
        return meta, tensors

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, Tensor]) -> TrainingProgress:
        state = cls()
        state.epoch, state.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        state.global_step, state.seen, state.classifying = meta["global_step"], meta["seen"], meta["classifying"]
        state.carried_seconds = meta["seconds"]
        state.sums = {k.removeprefix("sum."): v for k, v in tensors.items() if k.startswith("sum.")}
        state.correct = tensors["correct"]
        state.order_state = tensors.get("order")
        return state
