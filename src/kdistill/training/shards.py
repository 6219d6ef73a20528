"""Sharded training checkpoints under FSDP, through ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shard of the student's weights and the optimizer's state, at once and
in parallel, into a folder beside the training checkpoint (``<phase>.state.shards-<token>/``);
no rank ever holds the whole state. The folder is safetensors files in DCP's Hugging Face
layout (``HuggingFaceStorageWriter``: each file's header carries its slices' offsets), read back
by ``HuggingFaceStorageReader``, which reshards: a state saved by N ranks loads into any number
of processes, sharded or not. Neither side unpickles anything (DCP's default ``.metadata`` file
would be a pickle, and a run directory may come from anyone).

The checkpoint file itself (kdistill.training.checkpoint) keeps what is small and the same on
every rank (progress, schedule, generators, the optimizer's hyperparameters) and names the
folder with the SHA-256 of each of its files. It is replaced atomically after every shard is
on disk, so a run killed while writing resumes from the previous checkpoint and its folder.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from kdistill.errors import UserError, disk_full, is_disk_full
from kdistill.io import manifest
from kdistill.io.files import file_sha256
from kdistill.io.tensors import CheckpointError, read_meta

MODEL, OPTIMIZER = "model.", "optimizer."
FOLDER = r"\.shards-[0-9a-f]{8}"  # after the checkpoint's stem
SHARD_FILE = r"shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors"  # DCP's, one a rank


def folder_for(checkpoint: Path) -> Path:
    """A new folder name for the next shards of ``checkpoint`` (the previous one stays until
    the checkpoint file no longer names it)."""
    return checkpoint.with_name(f"{_stem(checkpoint)}.shards-{_token()}")


def _token() -> str:
    # Every rank must name the same folder: the main process draws, the others receive.
    token = [secrets.token_hex(4) if not dist.is_initialized() or dist.get_rank() == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _ties(model) -> dict[str, str]:
    """Each tied weight's other names and its first (a language model's head that shares the
    embedding): safetensors refuses to write one tensor twice, so the shards hold it once and
    loading fills both. Read from the parameters, the same on every rank."""
    first: dict[int, str] = {}
    ties = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            ties[name] = first[id(param)]
        else:
            first[id(param)] = name
    return ties


def _split(model, optimizer) -> tuple[dict[str, Tensor], dict, dict[str, str]]:
    """The model's and the optimizer's state, as this rank holds it (shards of DTensors under
    FSDP), flattened to named tensors for DCP; the optimizer's other entries (its
    hyperparameters, keyed by parameter name) apart; and the model's tied names (``_ties``)."""
    ties = _ties(model)
    weights = get_model_state_dict(model)
    tensors = {MODEL + k: v for k, v in weights.items() if k not in ties}
    state = get_optimizer_state_dict(model, optimizer)
    rest: dict = {"param_groups": state["param_groups"], "state": {}}
    for name, values in state["state"].items():
        rest["state"][name] = {}
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{OPTIMIZER}{name}.{key}"] = value
            else:
                rest["state"][name][key] = value
    return tensors, rest, ties


def save_shards(checkpoint: Path, model, optimizer) -> tuple[Path, dict, dict[str, str]]:
    """Every rank writes its shards into a new folder beside ``checkpoint`` (a collective).
    Returns the folder, the optimizer's entries that are not tensors (for the checkpoint file)
    and, on the main process, the SHA-256 of each file written (empty elsewhere)."""
    folder = folder_for(checkpoint)
    tensors, rest, _ = _split(model, optimizer)
    folder.mkdir(parents=True, exist_ok=True)
    main = not dist.is_initialized() or dist.get_rank() == 0
    if main:
        manifest.record(folder)  # before any file: the folder is the run's own from the start
    writer = dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True)
    try:
        with _one_process_is_meant():
            dcp.save(tensors, storage_writer=writer, no_dist=not dist.is_initialized())
    except CheckpointException as error:  # every rank raises it, whichever failed
        if main:
            remove_shards(checkpoint, keep=named_by(checkpoint), named=folder)
        causes = [cause for cause, _ in error.failures.values()]
        full = next((c for c in causes if is_disk_full(c)), None)
        if full is not None:
            raise disk_full(folder, kept="the previous checkpoint, intact") from None
        raise UserError(f"{folder}: the shards could not be written ({causes[0]})") from None
    if dist.is_initialized():
        dist.barrier()
    if not main:
        return folder, rest, {}
    files = sorted(folder.glob("*.safetensors"))
    manifest.record(*files)
    return folder, rest, {f.name: file_sha256(f) for f in files}


def load_shards(folder: Path, digests: dict[str, str], model, optimizer, rest: dict) -> None:
    """Load the shards ``folder`` holds into ``model`` and ``optimizer`` as they are laid out
    now (sharded over any number of ranks, or whole), after checking every file's digest."""
    _verify(folder, digests)
    tensors, _, ties = _split(model, optimizer)  # the layout to fill: DCP reads the slices needed
    try:
        reader = dcp.HuggingFaceStorageReader(str(folder))
        with _one_process_is_meant():
            dcp.load(tensors, storage_reader=reader, no_dist=not dist.is_initialized())
    except CheckpointException as error:  # a BaseException: every rank raises it
        cause = next(iter(error.failures.values()))[0]
        raise CheckpointError(
            f"{folder}: its shards do not fit this model ({str(cause).splitlines()[0][:200]}); "
            "resume with the recipe that wrote them"
        ) from None
    weights = {k.removeprefix(MODEL): v for k, v in tensors.items() if k.startswith(MODEL)}
    weights.update({name: weights[first] for name, first in ties.items()})
    state: dict = {"param_groups": rest["param_groups"]}
    state["state"] = {name: dict(values) for name, values in rest["state"].items()}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER):
            name, entry = key.removeprefix(OPTIMIZER).rsplit(".", 1)
            state["state"].setdefault(name, {})[entry] = value
    set_model_state_dict(model, weights)
    set_optimizer_state_dict(model, optimizer, state)


@contextlib.contextmanager
def _one_process_is_meant():
    """DCP warns whenever it runs without a process group; here one process is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _verify(folder: Path, digests: dict[str, str]) -> None:
    """Each file's SHA-256 against the checkpoint's record, the files shared out between the
    ranks; every rank learns whether any failed."""
    rank, ranks = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    names = sorted(digests)
    found = set(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else set()
    bad = [n for n in names if n not in found] or sorted(found - set(names))
    if not bad:
        bad = [n for n in names[rank::ranks] if file_sha256(folder / n) != digests[n]]
    failed = torch.tensor([len(bad)])
    if dist.is_initialized():
        dist.all_reduce(failed)
    if failed.item():
        what = f"{bad[0]} is missing, damaged or foreign" if bad else "a shard file is damaged"
        raise CheckpointError(
            f"{folder}: {what}; resume is not possible from it: start again without --resume"
        )


def shards_folder(checkpoint: Path, meta: dict) -> Path | None:
    """The folder a checkpoint file names (None for a whole checkpoint), refused in one line
    unless it is a shard folder of that very checkpoint, beside it."""
    shards = meta.get("shards")
    if shards is None:
        return None
    name = shards.get("folder") if isinstance(shards, dict) else None
    if not isinstance(name, str) or not re.fullmatch(re.escape(_stem(checkpoint)) + FOLDER, name):
        raise CheckpointError(f"{checkpoint}: it names no shard folder of its own")
    return checkpoint.with_name(name)


def named_by(checkpoint: Path) -> Path | None:
    """The shard folder ``checkpoint``'s file names now; None without a file, for a whole
    checkpoint, or for a file that cannot be read (nothing is then known to be the run's)."""
    if not checkpoint.is_file():
        return None
    try:
        return shards_folder(checkpoint, read_meta(checkpoint))
    except CheckpointError:
        return None


def remove_shards(checkpoint: Path, keep: Path | None = None, named: Path | None = None) -> None:
    """Delete the shard folders of ``checkpoint`` but ``keep`` (main process only): ``named``,
    the one its previous file named, and any the run recorded as its own (an interrupted
    save's). Inside them, only the files DCP names and the run could have written; a link,
    to a folder or a file, is never the run's and is never followed."""
    found = checkpoint.parent.glob(f"{_stem(checkpoint)}.shards-*")
    for folder in {*found, *([named] if named is not None else [])}:
        if folder == keep or folder.is_symlink() or not folder.is_dir():
            continue
        if folder == named or _recorded(folder):
            for file in folder.iterdir():
                if re.fullmatch(SHARD_FILE, file.name) and not file.is_symlink() and file.is_file():
                    file.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


def _stem(checkpoint: Path) -> str:
    return checkpoint.name.removesuffix(".safetensors")


def _recorded(folder: Path) -> bool:
    run_dir = manifest.run_dir_of(folder)
    listed = manifest.read(run_dir) if run_dir is not None else None
    if listed is None:
        return False
    return folder.absolute().relative_to(run_dir.absolute()).as_posix() in listed["folders"]
