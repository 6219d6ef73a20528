"""A training state (weights, optimizer, scheduler, every random generator, position in the data)
flattened into one checked safetensors file (kdistill.io.tensors), so that training continues
exactly where it stopped.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdistill.io.tensors import CheckpointError, load_tensors, save_tensors
from kdistill.training.sharding import load_state
from kdistill.training.shards import load_shards, shards_folder

# An optimizer's state is keyed by parameter index (``optimizer.state_dict()``) or, gathered from
# shards (kdistill.training.sharding), by parameter name; its entries' own names hold no dot.


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, Tensor], plain: dict) -> dict:
    def key_of(index: str) -> int | str:
        return int(index) if index.isdigit() else index

    state: dict = {key_of(i): dict(values) for i, values in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key.removeprefix("optimizer.").rsplit(".", 1)
            state.setdefault(key_of(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict]:
    """Every global random generator a training step may draw from."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    plain = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state(
        (kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(
    path: str | Path,
    *,
    weights: dict[str, Tensor],
    optimizer_state: dict,
    scheduler,
    progress: dict,
    progress_tensors: dict[str, Tensor],
    processes: int = 1,
    shards: dict | None = None,
) -> None:
    """One atomic file with everything needed to continue exactly where training stopped:
    the model's and the optimizer's state dicts (whole), the scheduler, every generator. Under
    FSDP the model's and the optimizer's tensors are in a folder of shards instead
    (kdistill.training.shards), which ``shards`` names with each file's digest."""
    tensors = {f"model.{k}": v for k, v in weights.items()}
    opt_tensors, opt_plain = _flatten_optimizer(optimizer_state)
    rng_tensors, rng_plain = rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    tensors.update({f"progress.{k}": v for k, v in progress_tensors.items()})
    meta = {
        "format": "kdistill-training-state/1",
        "progress": progress,
        "optimizer": opt_plain,
        "scheduler": scheduler.state_dict(),
        "processes": processes,
        "rng": rng_plain,
    }
    if shards is not None:
        meta["shards"] = shards
    save_tensors(path, tensors, meta)


def load_training_state(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    tensors, meta = load_tensors(path, what="training checkpoint", expect_digest=True)
    if meta.get("format") != "kdistill-training-state/1":
        raise CheckpointError(f"{path}: not a kdistill training checkpoint")
    return tensors, meta


def restore_training_state(
    tensors: dict[str, Tensor],
    meta: dict,
    *,
    model,
    optimizer,
    scheduler,
    processes: int = 1,
    path: str | Path | None = None,
) -> dict[str, Tensor]:
    """Load weights, optimizer (kdistill.training.sharding.load_state: sharded or not; or the
    shards beside the checkpoint at ``path``) and scheduler, saved by ``processes`` or another
    number of them; returns the ``progress.*`` tensors. The global generators are restored
    separately, by the caller, at the right moment."""
    folder = shards_folder(Path(path), meta) if path is not None else None
    if folder is not None:
        load_shards(folder, meta["shards"].get("files", {}), model, optimizer, meta["optimizer"])
    else:
        weights = {
            k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")
        }
        load_state(model, optimizer, weights, _unflatten_optimizer(tensors, meta["optimizer"]))
    schedule = dict(meta["scheduler"])
    saved = meta.get("processes", processes)
    if saved != processes:
        # Accelerate steps a schedule once per process for each update (its length counts
        # per-process batches): in another number of processes the same update is another step.
        for key in ("last_epoch", "_step_count"):
            if key in schedule:
                schedule[key] = schedule[key] * processes // saved
    scheduler.load_state_dict(schedule)
    return {k.removeprefix("progress."): v for k, v in tensors.items() if k.startswith("progress.")}
