"""Relation distillation: losses between the relations of samples within a batch (SP, RKD, PKT,
CC, ...). Student first, teacher second; teacher embeddings are constants."""

from __future__ import annotations

RELATION_LOSSES: dict = {}
