"""Depth pruning of a Hugging Face causal LM: score each decoder layer, keep the best k.

A layer whose output is nearly its input does little: ShortGPT (Men et al. 2024,
arXiv:2403.03853) scores layer i by its *block influence*, 1 − the mean cosine similarity
between the hidden states entering and leaving it over calibration tokens, and removes the
lowest-scoring layers. Minitron (Muralidharan et al. 2024, arXiv:2407.14679) pairs such depth
pruning with distillation from the unpruned model: the pruned network keeps the teacher's
weights and only has to recover what the removed layers did. Scores are computed once, on
training-split text, with no gradient.

Works on any Llama-like model (``model.model.layers``: Llama, Mistral, Qwen2, SmolLM2, ...),
bare or inside kdistill's ``HFModel`` wrapper.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kdistill.errors import ConfigError
from kdistill.models.hf import HFModel


def _causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``model`` (unwrapping ``HFModel``); refuses models
    without a ``model.layers`` list of decoder layers."""
    lm = model.model if isinstance(model, HFModel) else model
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(lm, "config"):
        raise ConfigError(
            "depth pruning needs a Llama-like Hugging Face causal LM (model.model.layers); "
            f"{type(lm).__name__} has no such layers"
        )
    return lm


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-like causal LM (bare or in ``HFModel``)."""
    return _causal_lm(model).model.layers


def _ids_and_mask(batch) -> tuple[Tensor, Tensor | None]:
    """Token ids and the counted positions of a batch: (B, L) ids, a ``{"input_ids",
    "attention_mask"}`` dict, or a kdistill batch (``input`` + ``mask``)."""
    if isinstance(batch, Tensor):
        return batch, None
    if "input" in batch:
        inputs, mask = batch["input"], batch.get("mask")
        if isinstance(inputs, Mapping):
            return inputs["input_ids"], mask if mask is not None else inputs.get("attention_mask")
        return inputs, mask
    return batch["input_ids"], batch.get("attention_mask")


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable) -> Tensor:
    """ShortGPT's block influence of every decoder layer, shape (num_layers,): 1 − the mean
    cosine similarity between the layer's input and output hidden states over the counted
    (non-padding) tokens of ``batches``. High = the layer changes its input a lot."""
    lm = _causal_lm(model)
    layers = lm.model.layers
    sums = torch.zeros(len(layers), dtype=torch.float64)
    state: dict[str, Tensor | None] = {"mask": None}

    def hook(index: int):
        def record(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cosine = torch.nn.functional.cosine_similarity(
                hidden_in.float(), hidden_out.float(), dim=-1
            )
            sums[index] += cosine[state["mask"]].double().sum().cpu()

        return record

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    count = 0
    try:
        for batch in batches:
            ids, mask = _ids_and_mask(batch)
            ids = ids.to(device)
            mask = (
                torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
            )
            state["mask"] = mask
            lm(input_ids=ids, attention_mask=mask.long(), use_cache=False)
            count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        lm.train(was_training)
    if count == 0:
        raise ValueError("block influence: the calibration batches hold no counted tokens")
    return (1.0 - sums / count).float()


def select_layers(scores: Tensor, keep: int) -> list[int]:
    """The ``keep`` layers of highest influence, in their original order."""
    if not 1 <= keep <= len(scores):
        raise ConfigError(f"keep: {keep} layers; choose between 1 and the model's {len(scores)}")
    return sorted(torch.topk(scores, keep).indices.tolist())


def prune_layers(model: nn.Module, keep_layers: list[int]) -> nn.Module:
    """A new causal LM with only the decoder layers ``keep_layers`` (in that order), the
    embeddings, final norm and head copied (tied embeddings stay tied); the config's
    ``num_hidden_layers`` and each attention's ``layer_idx`` are renumbered, so the KV cache
    and ``save_pretrained`` / ``from_pretrained`` work. ``model`` is left unchanged; an
    ``HFModel`` gives an ``HFModel``."""
    lm = _causal_lm(model)
    layers = lm.model.layers
    bad = [i for i in keep_layers if not (isinstance(i, int) and 0 <= i < len(layers))]
    if bad or not keep_layers or len(set(keep_layers)) != len(keep_layers):
        raise ConfigError(
            f"layers {list(keep_layers)} must be distinct "
            f"indices of the model's {len(layers)} layers"
        )
    lm.model.layers = nn.ModuleList()  # not copied below: only the kept layers are
    try:
        pruned = copy.deepcopy(lm)  # one deepcopy: a parameter shared by two modules stays shared
    finally:
        lm.model.layers = layers
    pruned.model.layers = nn.ModuleList(copy.deepcopy(layers[i]) for i in keep_layers)
    for new_index, layer in enumerate(pruned.model.layers):
        for (
            module
        ) in layer.modules():  # the attention (and any sub-module) reads its cache slot by index
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = pruned.config
    config.num_hidden_layers = len(keep_layers)
    if isinstance(
        getattr(config, "layer_types", None), list
    ):  # per-layer attention kinds (sliding, full)
        config.layer_types = [config.layer_types[i] for i in keep_layers]
    if getattr(config, "tie_word_embeddings", False):
        pruned.tie_weights()
    if isinstance(model, HFModel):
        return HFModel(pruned, model.task)
    return pruned


def calibration_batches(dataset, tokens: int, batch_size: int = 8) -> list[dict]:
    """The first windows of ``dataset`` (a kdistill token dataset) holding at least ``tokens``
    counted positions, as batches of ``input`` ids and ``mask``: a fixed sample, so every run of
    a recipe keeps the same layers."""
    inputs, masks, counted = [], [], 0
    for i in range(len(dataset)):
        if counted >= tokens:
            break
        sample = dataset[i]
        ids = (
            sample["input"]["input_ids"]
            if isinstance(sample["input"], Mapping)
            else sample["input"]
        )
        mask = sample.get("mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        inputs.append(ids)
        masks.append(mask)
        counted += int(mask.sum())
    if not inputs:
        raise ConfigError("calibration_tokens: the training split is empty")
    return [
        {
            "input": torch.stack(inputs[i : i + batch_size]),
            "mask": torch.stack(masks[i : i + batch_size]),
        }
        for i in range(0, len(inputs), batch_size)
    ]


def prune_by_influence(
    model: nn.Module, dataset, *, keep: int, calibration_tokens: int = 8192
) -> tuple[nn.Module, dict]:
    """``model`` depth-pruned to its ``keep`` most influential layers, scored on the first
    ``calibration_tokens`` tokens of ``dataset``; returns it and what was decided (the scores,
    the kept layers, the tokens scored) for the run's record."""
    lm = _causal_lm(model)
    select_layers(torch.zeros(lm.config.num_hidden_layers), keep)  # a bad keep fails before scoring
    batches = calibration_batches(dataset, calibration_tokens)
    scores = block_influence(model, batches)
    kept = select_layers(scores, keep)
    info = {
        "method": "block influence (ShortGPT, arXiv:2403.03853)",
        "layers": len(scores),
        "keep_layers": kept,
        "scores": [round(float(s), 5) for s in scores],
        "calibration_tokens": sum(int(b["mask"].sum()) for b in batches),
    }
    return prune_layers(model, kept), info


__all__ = [
    "block_influence",
    "calibration_batches",
    "layer_stack",
    "prune_by_influence",
    "prune_layers",
    "select_layers",
]
