"""The classic mode (Hinton et al. 2015): a fixed, trained teacher distils the student; the
scratch student, the same architecture trained on the labels alone, is the baseline."""

from __future__ import annotations

from kdistill.teaching.roles import Roles, School, train_student


def teach(school: School, *, cached: bool = False) -> Roles:
    teacher = school.obtain_teacher()
    frozen = school.frozen(teacher.model, cached=cached)
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    student = train_student(school, "student", school.distill_terms, frozen)
    return {"teacher": teacher, "scratch": scratch, "student": student}
