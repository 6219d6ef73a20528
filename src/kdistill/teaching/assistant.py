"""Teacher assistant (TAKD: Mirzadeh et al., "Improved Knowledge Distillation via Teacher
Assistant", AAAI 2020, arXiv:1902.03393): a model between the teacher and the student in size is
distilled from the teacher with the same terms, then teaches the student in its place."""

from __future__ import annotations

from kdistill.teaching.roles import Roles, School, train_student


def teach(school: School, *, cached: bool = False) -> Roles:
    teacher = school.obtain_teacher()
    assistant = train_student(
        school,
        "assistant",
        school.distill_terms,
        school.frozen(teacher.model, cached=cached),
        architecture="assistant",
    )
    scratch = train_student(school, "scratch", school.scratch_terms, None)
    student = train_student(school, "student", school.distill_terms, school.frozen(assistant.model))
    return {"teacher": teacher, "assistant": assistant, "scratch": scratch, "student": student}
