"""How the report names the models a run measured."""

from __future__ import annotations

ROLES = ("teacher", "scratch", "student")
ROLE_TITLES = {
    "teacher": "teacher",
    "pruned": "pruned student, untrained",
    "assistant": "teacher assistant",
    "scratch": "student from scratch",
    "pseudo_labels": "student on the teacher's hard labels (self-training)",
    "student": "distilled student",
}


def table_roles(summary: dict) -> list[str]:
    """Every model a run measured, teacher first, distilled student last: the three roles plus
    a teacher assistant and born-again generations when the run had them."""
    generations = sorted(
        (k for k in summary if k.startswith("generation_")), key=lambda k: int(k.split("_")[1])
    )
    return [
        r
        for r in (
            "teacher",
            "pruned",
            "assistant",
            "scratch",
            *generations,
            "pseudo_labels",
            "student",
        )
        if r in summary
    ]


def role_title(role: str) -> str:
    if role.startswith("generation_"):
        return f"born-again generation {role.split('_')[1]}"
    return ROLE_TITLES.get(role, role)
