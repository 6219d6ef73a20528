"""Born-again networks (Furlanello et al., ICML 2018, arXiv:1805.04770): generation 0 is the
student trained from scratch; each later generation, same architecture, is distilled from the
one before, and the last is the student. Generation 0 is the teacher of the report."""

from __future__ import annotations

import dataclasses

from kdistill.teaching.roles import Roles, School, train_student


def teach(school: School, *, generations: int = 2) -> Roles:
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    roles: Roles = {
        "teacher": dataclasses.replace(
            scratch, source="born-again generation 0 (the scratch student)"
        ),
        "scratch": scratch,
    }
    previous = scratch
    for generation in range(1, generations + 1):
        phase = "student" if generation == generations else f"generation_{generation}"
        previous = train_student(school, phase, school.distill_terms, school.frozen(previous.model))
        roles[phase] = previous
    return roles
