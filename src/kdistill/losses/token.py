"""Token-level distillation for language models: divergences between the teacher's and the
student's next-token distributions at every counted position."""

from __future__ import annotations

TOKEN_LOSSES: dict = {}
