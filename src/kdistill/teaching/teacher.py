"""The classic mode (Hinton et al. 2015): a fixed, trained teacher distils the student; the
scratch student, the same architecture trained on the labels alone, is the baseline."""

from __future__ import annotations

from kdistill.teaching.roles import PSEUDO_LABELS, Roles, School, train_student


def teach(school: School, *, cached: bool = False, pseudo_labels: bool = False) -> Roles:
    """``pseudo_labels``: also the self-training baseline, a student trained on the labels and
    the teacher's hard labels of the transfer set, for the same steps."""
    teacher = school.obtain_teacher()
    frozen = school.frozen(teacher.model, cached=cached)
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    roles = {"teacher": teacher, "scratch": scratch}
    if pseudo_labels:
        school.pseudo_label(frozen)
        roles[PSEUDO_LABELS] = train_student(school, PSEUDO_LABELS, school.scratch_terms, None)
    roles["student"] = train_student(school, "student", school.distill_terms, frozen)
    return roles
