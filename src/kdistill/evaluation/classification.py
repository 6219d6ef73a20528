"""Scoring a classifier on a split: its logits and targets gathered across processes, accuracy and
cross-entropy. The loop calls ``evaluate`` on the validation split; it needs nothing of the loop.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from kdistill.evaluation.paired import Outcomes
from kdistill.modeling import call_model, to_device


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
            batch = to_device(batch, device)
            logits = call_model(model, batch["input"]).float()
            targets = batch["target"]
            if accelerator is not None:
                logits, targets = accelerator.gather_for_metrics((logits, targets))
            all_logits.append(logits)
            all_targets.append(targets)
    model.train(was_training)
    return torch.cat(all_logits).cpu(), torch.cat(all_targets).cpu()


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator | None = None,
    *,
    outcomes: bool = False,
) -> dict:
    """Accuracy (a fraction) and mean cross-entropy of ``model`` on a split; with ``outcomes``,
    also whether each sample was right, for paired comparisons (``evaluation.paired``)."""
    logits, targets = predict(model, loader, accelerator)
    correct = logits.argmax(1) == targets
    scores = {
        "accuracy": correct.float().mean().item(),
        "loss": F.cross_entropy(logits, targets).item(),
        "n": len(targets),
    }
    if outcomes:
        scores["outcomes"] = Outcomes.of(correct.numpy())
    return scores
