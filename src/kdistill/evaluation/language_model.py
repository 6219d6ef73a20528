"""Scoring language models: perplexity over a split, and sample continuations for the report."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdistill.distiller import call_model
from kdistill.losses.lm import IGNORE_INDEX


def _to_device(value, device):
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value.to(device) if hasattr(value, "to") else value


@torch.no_grad()
def evaluate_lm(model: nn.Module, loader: DataLoader, accelerator=None) -> dict:
    """Perplexity = exp(mean next-token cross-entropy over the counted positions of a split),
    with the mean cross-entropy (``loss``, nats per token) and next-token accuracy.

    Positions count where the batch's ``mask`` is true and the target is a real token; sums
    are gathered per sequence, so a distributed run counts every token once.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device
    nll_sum = correct_sum = count_sum = 0.0
    for batch in loader:
        batch = _to_device(batch, device)
        logits = call_model(model, batch["input"]).float()
        target = batch["target"]
        counted = target != IGNORE_INDEX
        if batch.get("mask") is not None:
            counted &= batch["mask"].bool()
        safe = torch.where(counted, target, 0)
        nll = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")
        per_seq = torch.stack([
            torch.where(counted, nll, 0.0).sum(1),
            ((logits.argmax(-1) == safe) & counted).sum(1).float(),
            counted.sum(1).float(),
        ], dim=1)
        if accelerator is not None:
            per_seq = accelerator.gather_for_metrics(per_seq)
        nll_part, correct_part, count_part = per_seq.sum(0).tolist()
        nll_sum, correct_sum, count_sum = nll_sum + nll_part, correct_sum + correct_part, count_sum + count_part
    model.train(was_training)
    mean_nll = nll_sum / max(count_sum, 1.0)
    return {
        "perplexity": math.exp(mean_nll),
        "loss": mean_nll,
        "token_accuracy": correct_sum / max(count_sum, 1.0),
        "n": int(count_sum),
    }


def lm_samples(models: dict[str, nn.Module], splits, *, prompts: int = 3, prompt_length: int = 32,
               steps: int = 160, temperature: float = 0.8, seed: int = 0) -> list[dict[str, str]]:
    """Continuations of the first ``prompt_length`` tokens of a few test windows (evenly
    spaced, so fixed for a split), by every model with the same seed; the models see at most
    their block size of context."""
    from kdistill.sampling import sample_texts

    dataset = splits.test
    codec = getattr(dataset, "codec", None)
    if codec is None or len(dataset) == 0:
        return []
    length = splits.input_shape[-1]
    prompt_length = min(prompt_length, length // 2)
    last = max(len(dataset) - 2, 0)  # the last window may be padding
    picks = sorted({round(i * last / max(prompts - 1, 1)) for i in range(prompts)})
    texts = [codec.decode(dataset[i]["input"][:prompt_length].tolist()) for i in picks]
    return sample_texts(
        {name: model.cpu() for name, model in models.items()}, codec, texts,
        steps=steps, temperature=temperature, context=length, seed=seed,
    )


__all__ = ["evaluate_lm", "lm_samples"]
