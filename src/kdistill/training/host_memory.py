"""Keep freed host memory in the process while training, so that the next step reuses it.

A training step on the CPU frees and allocates the same large buffers every step: a language
model's chunk of logits alone is (chunk, V) floats, 25 MB for 128 positions of a 49k
vocabulary, and its loss makes several. PyTorch's CPU allocator takes each straight from
malloc. glibc serves a block over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it when freed, and it trims the heap's free top back to the kernel past the trim
threshold; either way the next step's buffer comes back as new pages, each a page fault and a
page the kernel zeroes: 3.4 M faults in the SmolLM2 race's 32 steps.

Raising both thresholds for the training keeps the freed blocks in the heap, where the next
step finds them: 0.95 M faults, 1.05x the race's tokens/s on one thread at the same peak
memory (bench/host_memory.py; on the two-thread recipe the time does not change). This is the
glibc form of what Intel's PyTorch tuning guide gets by preloading jemalloc or tcmalloc. When
training ends the thresholds go to the values glibc's own dynamic rule reaches after freeing a
large block (mmap 32 MiB, trim twice that), and ``malloc_trim`` hands the free memory back.
Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

__all__ = ["keep_freed_memory"]

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# While training: blocks up to 96 MiB come from the heap (a chunk of 128 positions' logits up to
# a 190k vocabulary), and the heap keeps up to 512 MiB free at its top (a chunk's buffers).
# Larger blocks (a head's gradient, a cache build's batch of logits) are still mapped and
# unmapped: kept in the heap, a freed one is often not reused (PyTorch asks for 64-byte aligned
# blocks, which need a little more than a freed block of the same size offers), and a recipe's
# peak RSS grew from 3.8 to 8.2 GB with every block kept.
TRAINING = {M_MMAP_THRESHOLD: 96 << 20, M_TRIM_THRESHOLD: 512 << 20}
# After: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems, and the trim threshold its
# dynamic rule pairs with it.
AFTER = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
_depth = 0  # keep_freed_memory blocks open now (only the outermost one sets and restores)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Only glibc has gnu_get_libc_version; the other two are what this module calls. A
        # missing symbol raises AttributeError.
        for symbol in ("gnu_get_libc_version", "mallopt", "malloc_trim"):
            getattr(libc, symbol)
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc: ctypes.CDLL, settings: dict[int, int]) -> bool:
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings.items())


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, freed host memory stays in the process; yields whether it applies
    (glibc only). Blocks nest: only the outermost one sets and restores."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    if _depth == 0 and not _set(libc, TRAINING):
        _set(libc, AFTER)
        yield False
        return
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            _set(libc, AFTER)
            libc.malloc_trim(0)
