"""Who teaches: one module per teaching mode behind one registry, ``MODES``.

A mode is a function ``teach(school, **options) -> Roles``. It receives a ``School`` (the few
things a mode may ask of a run: build a model of a named architecture, obtain the teacher,
freeze a model into a teacher, distil a student into a checkpoint) and the mode's own options,
never the recipe; it returns the roles it produced, each with its model, its architecture and
the checkpoint file that holds it. The rest of the run (evaluation, report, export, resume)
reads those roles, never the mode's name.
"""

from __future__ import annotations

from collections.abc import Callable

from kdistill.teaching import assistant, born_again, ensemble, mutual, teacher
from kdistill.teaching.roles import Role, Roles, School, train_student

MODES: dict[str, Callable[..., Roles]] = {
    "teacher": teacher.teach,
    "ensemble": ensemble.teach,
    "assistant": assistant.teach,
    "born_again": born_again.teach,
    "mutual": mutual.teach,
}

__all__ = ["MODES", "Role", "Roles", "School", "train_student"]
