"""Freed host memory stays in the process while training (kdistill.training.host_memory)."""

import resource
import sys

import pytest
import torch

import kdistill.training.host_memory as host_memory
from kdistill.losses.chunked import ChunkedTerm, chunked_token_losses
from kdistill.losses.token import forward_kl
from kdistill.modeling import LazyLogits
from kdistill.training.host_memory import keep_freed_memory

glibc = pytest.mark.skipif(
    host_memory._glibc() is None, reason="mallopt is glibc's; other C libraries are left alone"
)


def _faults_of_steps(times: int) -> int:
    """Minor page faults of ``times`` chunked-loss passes, forward and backward, over a 32k
    vocabulary: a language model step's large (positions, V) buffers, 64 MB each."""
    positions, width, vocab = 512, 64, 32768
    generator = torch.Generator().manual_seed(0)
    head = torch.randn(vocab, width, generator=generator) / 8
    teacher = LazyLogits(torch.randn(positions, width, generator=generator), head)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        hidden = torch.randn(positions, width, generator=generator, requires_grad=True)
        student = LazyLogits(hidden, head.clone().requires_grad_())
        total, _ = chunked_token_losses(
            student, teacher, None, [ChunkedTerm(forward_kl)], chunk_size=positions
        )
        total.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_freed_buffers_are_reused_inside_and_handed_back_after():
    outside = _faults_of_steps(3)
    with keep_freed_memory() as applies:
        assert applies
        _faults_of_steps(1)  # the first pass maps its buffers
        inside = _faults_of_steps(3)
    after = _faults_of_steps(3)
    # Measured: 200k faults outside, 33k inside (PyTorch's 64-byte aligned allocations do not
    # always fit a freed block of their size), 150k after.
    assert inside * 3 < outside
    assert after > 2 * inside  # nothing stays held after training


@glibc
def test_blocks_nest_and_only_the_outermost_restores():
    with keep_freed_memory():
        with keep_freed_memory() as inner:
            assert inner
        assert host_memory._depth == 1
        _faults_of_steps(1)
        still_kept = _faults_of_steps(3)
    assert host_memory._depth == 0
    assert still_kept * 3 < _faults_of_steps(3)


def test_elsewhere_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with keep_freed_memory() as applies:
        assert not applies
    assert host_memory._depth == 0


def test_training_runs_inside_it(monkeypatch):
    import kdistill
    import kdistill.training.loop as loop
    from kdistill.methods.presets import scratch
    from kdistill.models.mlp import MLP

    seen = []
    real = loop.keep_freed_memory

    def spy():
        seen.append("entered")
        return real()

    monkeypatch.setattr(loop, "keep_freed_memory", spy)
    distiller = kdistill.Distiller(MLP(3, (4,), width=8), scratch())
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    kdistill.fit(distiller, (x, y), epochs=1, batch_size=8, progress=False)
    assert seen == ["entered"]
    assert host_memory._depth == 0
