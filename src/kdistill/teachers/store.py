"""Where a teacher cache lives: a directory kdistill claims (never a user's), and who writes it
when a run spans several machines.

On one machine, or on machines that share the cache's filesystem, every rank writes its own
rows into the files rank 0 made. A machine with its own local disk cannot open those files, so
when any rank cannot see rank 0's cache directory every rank's outputs are all-gathered, batch
by batch, and one process per machine (its local main) writes a complete copy to its own disk.
Which case holds is found out, not assumed: rank 0 leaves a random token in the directory and
every rank looks for it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from kdistill.errors import UserError, disk_full, is_disk_full

TOKEN = ".kdistill-cache-main"
NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


MARKER = ".kdistill-cache"  # written first into a directory this code made for a cache
HEAD = "head.safetensors"  # a hidden-state cache's output layer, written before meta.json


def _written_by_a_build(name: str) -> bool:
    """A file name a cache build writes before its meta.json (a killed build leaves them)."""
    if name in (MARKER, TOKEN, "meta.json.tmp", HEAD) or name.endswith(".npy"):
        return True
    return name.startswith(f".{HEAD}.") and name.endswith(".tmp")  # its atomic write's


def check_cache_root(root: Path) -> None:
    """Refuse a ``teacher.cache_dir`` that kdistill may not write into: one that holds files a
    cache build did not write (a user's directory is never emptied), or a file."""
    if root.exists() and not root.is_dir():
        raise UserError(f"teacher.cache_dir: {root} is a file, not a directory")
    if not root.is_dir() or not any(root.iterdir()) or (root / "meta.json").is_file():
        return
    if not (root / MARKER).is_file():
        raise UserError(
            f"teacher.cache_dir: {root} already holds files that are not a kdistill teacher cache; "
            "point it at a new or empty directory"
        )
    strangers = [p.name for p in root.iterdir() if not _written_by_a_build(p.name)]
    if strangers:
        raise UserError(
            f"teacher.cache_dir: {root} holds {strangers[0]!r}, which a cache build did not write; "
            "point teacher.cache_dir at a new or empty directory"
        )


def _size(count: int) -> str:
    return f"{count / 1e9:,.1f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def check_space(root: Path, needed: int) -> None:
    """Refuse a cache larger than the free space of its disk before a byte of it is written: the
    files are preallocated sparse, so a full disk would otherwise end the build half-way. A
    language model's full-vocabulary logits are the usual cause (views × tokens × vocabulary)."""
    disk = next((p for p in (root, *root.parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(disk).free
    if needed > free:
        raise UserError(
            "teacher.cache: the teacher's outputs would take "
            f"{_size(needed)} at {root}, but its disk has "
            f"{_size(free)} free: set teacher.cache_topk "
            "(e.g. 64) to keep the most probable classes only, "
            "teacher.cache_dir to a larger disk, or teacher.cache=false"
        )


def allocate(root: Path, layout: dict[Path, tuple], needed: int) -> None:
    """Create each ``.npy`` file of ``layout`` (path: shape and dtype) with all its disk blocks.

    A file made by ``open_memmap`` is sparse, and a memory map whose file cannot get a block
    when a row is written kills the process with SIGBUS, without a word. Allocated up front, a
    disk that filled since ``check_space`` (another writer, a quota) fails here, with ENOSPC,
    and the files made so far are removed."""
    try:
        for path, (shape, dtype) in layout.items():
            np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
            with path.open("r+b") as file:
                try:
                    os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
                except OSError as error:  # a file system without fallocate keeps the file sparse
                    if is_disk_full(error) or error.errno not in NO_FALLOCATE:
                        raise
    except OSError as error:
        if not is_disk_full(error):
            raise
        for path in layout:
            path.unlink(missing_ok=True)
        kept = "no teacher cache (its unfinished files were removed)"
        raise disk_full(root, kept=kept, needed=needed) from None


def claim(root: Path) -> None:
    """Make ``root`` ready for a new cache without ever deleting what kdistill did not write: a
    missing or empty directory is taken (and marked); an unfinished cache of ours (marked, no
    ``meta.json``) is emptied of its own files; anything else is refused."""
    check_cache_root(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.name != MARKER:  # check_cache_root allowed only files of a cache build
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("teacher cache written by kdistill\n")


def agree_on_cache(root: Path, fingerprint: dict, accelerator) -> None:
    """Refuse a build the processes disagree on before any of them opens a file: each fills
    its rows of the files rank 0 makes at ``root``, so a rank with another ``root`` (its own
    temporary directory) or another teacher (weights that differ by rank) would wait for files
    nobody makes, or write the outputs of another teacher into them. Machines with their own
    disks may each name another directory: only processes of one machine must share one."""
    from accelerate.utils import gather_object

    where = str(root) if one_machine(accelerator) else None
    identity = json.dumps([where, fingerprint], sort_keys=True, default=str)
    mine = hashlib.sha256(identity.encode()).hexdigest()
    everyone = gather_object([mine])
    differ = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
    if differ:
        raise RuntimeError(
            f"teacher cache {root}: process(es) {differ} would build another cache than process 0 "
            "(another directory, teacher or data): every process must hold the same teacher "
            "and cache directory"
        )


def one_machine(accelerator) -> bool:
    """All processes on this machine (torchrun's ``LOCAL_WORLD_SIZE`` equals the world)."""
    world = accelerator.num_processes
    return world == 1 or int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world


def everyone_sees_main_root(root: Path, accelerator) -> tuple[bool, bool]:
    """After rank 0 has claimed ``root``: (whether every rank sees rank 0's directory, whether
    this one does). Rank 0 writes a token there; each rank reads it back from its own ``root``."""
    from accelerate.utils import broadcast_object_list

    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    broadcast_object_list(token)
    if accelerator.is_main_process:
        (root / TOKEN).write_text(token[0])
    accelerator.wait_for_everyone()
    path = root / TOKEN
    mine = path.is_file() and path.read_text() == token[0]
    everyone = bool(accelerator.gather(torch.tensor([mine], device=accelerator.device)).all())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.unlink()
    return everyone, mine


def padded_shard(count: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s strided share of ``count`` samples, padded (with a repeat of a sample it
    already has, or sample 0) to ceil(count / world) so every rank runs as many equal batches:
    all-gathers need equal shapes, and a repeated row is written twice with the same value."""
    mine = list(range(rank, count, world))
    return mine + [mine[-1] if mine else 0] * (math.ceil(count / world) - len(mine))


__all__ = [
    "MARKER",
    "TOKEN",
    "agree_on_cache",
    "allocate",
    "check_cache_root",
    "claim",
    "everyone_sees_main_root",
    "one_machine",
    "padded_shard",
]
