"""Scoring language models: perplexity over a split, and sample continuations for the report."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader

from kdistill.distiller import call_model
from kdistill.evaluation.paired import Outcomes
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.modeling import (
    READS_TEACHER_INPUTS,
    TEACHER_PREFIX,
    LazyLogits,
    to_device,
    unwrap,
)

# Positions whose logits exist at once when scoring a model that gives its final hidden states
# (a Hugging Face causal LM): 1024 × 49k float32 logits are 200 MB, a batch's would be B·L/1024
# times that.
EVAL_CHUNK = 1024
LN2 = math.log(2)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    loader: DataLoader,
    accelerator=None,
    *,
    outcomes: bool = False,
    per_byte: bool = False,
) -> dict:
    """Perplexity = exp(mean next-token cross-entropy over the counted positions of a split),
    with the mean cross-entropy (``loss``, nats per token) and next-token accuracy. With
    ``outcomes``, also each sequence's summed negative log-likelihood and token count: the
    blocks of the test stream a paired bootstrap of the perplexity resamples.

    ``per_byte``: models that read different tokenizers (``kdistill.data.cross_tokenizer``)
    are also scored in ``bits_per_byte``, Σ NLL / (ln 2 · Σ UTF-8 bytes of the counted target
    tokens), which does not depend on the tokenizer; a model built as the teacher scores its
    own tokens of each window (``teacher_*``), and the outcomes are bits over bytes per window,
    so teacher and students pair window by window.

    Positions count where the batch's ``mask`` is true and the target is a real token; sums
    are gathered per sequence, so a distributed run counts every token once.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64)  # nll, correct, count, bytes
    sequences = []
    # An FSDP unit frees its weights after its forward pass, the head's too: its logits are
    # made inside the pass, whole, not read from the head afterwards.
    lazy = not isinstance(unwrap(model), FSDPModule)
    for batch in loader:
        batch = to_device(batch, device)
        inputs, target, counted, nbytes = _positions(model, batch, per_byte)
        safe = torch.where(counted, target, 0)
        nll, hits = _scores(call_model(model, inputs, lazy_logits=lazy), safe)
        per_seq = torch.stack(
            [
                torch.where(counted, nll, 0.0).sum(1),
                (hits & counted).sum(1).float(),
                counted.sum(1).float(),
                torch.where(counted, nbytes, 0).sum(1).float(),
            ],
            dim=1,
        )
        if accelerator is not None:
            per_seq = accelerator.gather_for_metrics(per_seq)
        if outcomes:
            sequences.append(per_seq.cpu().double())
        sums += per_seq.sum(0).cpu().double()
    model.train(was_training)
    nll_sum, correct_sum, count_sum, bytes_sum = sums.tolist()
    mean_nll = nll_sum / max(count_sum, 1.0)
    result = {
        "perplexity": math.exp(mean_nll),
        "loss": mean_nll,
        "token_accuracy": correct_sum / max(count_sum, 1.0),
        "n": int(count_sum),
    }
    if per_byte:
        result = {"bits_per_byte": nll_sum / (LN2 * max(bytes_sum, 1.0)), **result}
    if outcomes:
        per_seq = torch.cat(sequences).numpy() if sequences else torch.zeros(0, 4).numpy()
        if per_byte:
            result["outcomes"] = Outcomes.of(
                per_seq[:, 0] / LN2, per_seq[:, 3], unit="test windows"
            )
        else:
            result["outcomes"] = Outcomes.of(
                per_seq[:, 0], per_seq[:, 2], unit="test windows", exponentiate=True
            )
    return result


def evaluate_bits_per_byte(model, loader, accelerator=None, *, outcomes: bool = False) -> dict:
    """``evaluate_lm`` with ``per_byte``: the evaluation of models across tokenizers."""
    return evaluate_lm(model, loader, accelerator, outcomes=outcomes, per_byte=True)


def _positions(model: nn.Module, batch: dict, per_byte: bool):
    """What ``model`` reads of a batch and scores: its inputs, targets, counted positions and
    (``per_byte``) each target's bytes. A teacher with a tokenizer of its own reads its own
    ids and targets; padding there is a target of no bytes."""
    if per_byte and getattr(unwrap(model), READS_TEACHER_INPUTS, False):
        inputs, nbytes = batch["input"], batch["teacher_bytes"]
        ids = {"input_ids": inputs[f"{TEACHER_PREFIX}input_ids"]}
        return ids, inputs[f"{TEACHER_PREFIX}target"], nbytes > 0, nbytes
    target = batch["target"]
    counted = target != IGNORE_INDEX
    if batch.get("mask") is not None:
        counted &= batch["mask"].bool()
    return batch["input"], target, counted, batch.get("bytes", torch.zeros_like(target))


def _scores(logits, target):
    """Next-token negative log-likelihood and whether the argmax is the target, per position;
    ``LazyLogits`` are multiplied out ``EVAL_CHUNK`` positions at a time."""
    if not isinstance(logits, LazyLogits):
        logits = logits.float()
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none"), logits.argmax(
            -1
        ) == target
    hidden = logits.hidden.reshape(-1, logits.hidden.shape[-1])
    weight = logits.weight.float()
    bias = None if logits.bias is None else logits.bias.float()
    flat_target = target.reshape(-1)
    nll = torch.empty(flat_target.shape, device=hidden.device)
    hits = torch.empty(flat_target.shape, dtype=torch.bool, device=hidden.device)
    for start in range(0, len(flat_target), EVAL_CHUNK):
        rows = slice(start, start + EVAL_CHUNK)
        chunk = F.linear(hidden[rows].float(), weight, bias)
        nll[rows] = F.cross_entropy(chunk, flat_target[rows], reduction="none")
        hits[rows] = chunk.argmax(-1) == flat_target[rows]
    return nll.reshape(target.shape), hits.reshape(target.shape)


def lm_samples(
    models: dict[str, nn.Module],
    splits,
    *,
    prompts: int = 3,
    prompt_length: int = 32,
    steps: int = 160,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Continuations of the first ``prompt_length`` tokens of a few test windows (evenly
    spaced, so fixed for a split), by every model with the same seed; the models see at most
    their block size of context."""
    from kdistill.training.sampling import sample_texts

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
        {name: model.cpu() for name, model in models.items()},
        codec,
        texts,
        steps=steps,
        temperature=temperature,
        context=length,
        seed=seed,
    )


__all__ = ["evaluate_bits_per_byte", "evaluate_lm", "lm_samples"]
