"""A top-k cache read back with its tail mass spread uniformly over the V − k tokens it does
not hold: the dense teacher a top-k cache would be if nothing were known about the tail's shape.
Measured against the bucket form (bench/llm_sparse.py, signal ``topk<k>u``), which spreads the
tail by the student's own tail shape: for the forward KL the two are the same loss (value and
gradient, tests/test_sampled_teacher.py), so the bucket form is kdistill's "student-shaped tail".
"""

from __future__ import annotations

import math

from kdistill.distiller import ModelOutput
from kdistill.teachers.cache import CachedTeacher


class UniformTail(CachedTeacher):
    """A ``CachedTeacher`` of a top-k cache whose outputs are dense (…, V) log-probabilities:
    the teacher's at the top k, tail / (V − k) at every other token."""

    def __call__(self, batch) -> ModelOutput:
        output = super().__call__(batch)
        sparse = output.logits
        vocab, k = sparse.vocab_size, sparse.indices.shape[-1]
        spread = sparse.tail_log_prob - math.log(vocab - k)
        dense = spread[..., None].expand(*spread.shape, vocab).clone()
        dense.scatter_(-1, sparse.indices.long(), sparse.log_probs)
        return ModelOutput(dense, output.features)
