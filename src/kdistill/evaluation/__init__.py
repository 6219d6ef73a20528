"""What a model learns and how it is scored. A task names its metrics (the first is the
headline the report and the verdict use), which direction is better, how a split is evaluated,
and the terms a student trains with when there is no teacher (the scratch baseline).

Datasets say which task they are (``DataSplits.task``); the composition root looks it up here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kdistill.evaluation.classification import evaluate
from kdistill.evaluation.language_model import evaluate_bits_per_byte, evaluate_lm, lm_samples
from kdistill.evaluation.ranking import evaluate_ranking
from kdistill.methods import Term, scratch


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]
    # Every metric ``evaluate`` returns, and whether higher is better: what early stopping watches.
    higher_is_better: dict[str, bool]
    evaluate: Callable[..., dict]  # (model, loader, accelerator=None) -> {metric: value, ...}
    scratch_terms: Callable[[], list[Term]]
    percent: frozenset[str] = frozenset()  # metrics shown as percentages
    # ({role: model}, splits) -> rows of example outputs for the report (generated text)
    samples: Callable[..., list[dict]] | None = None

    @property
    def headline(self) -> str:
        return self.metrics[0]

    def scores(self, result: dict) -> dict:
        """The metrics of an ``evaluate`` result, without its count and per-unit outcomes: what
        a run's summary and ``DistillResult.metrics`` hold."""
        return {k: v for k, v in result.items() if k not in ("n", "outcomes")}

    def better(self, a: float, b: float) -> bool:
        """Whether headline value ``a`` is better than ``b``."""
        return a > b if self.higher_is_better[self.headline] else a < b


CLASSIFICATION = Task(
    name="classification",
    metrics=("accuracy",),
    higher_is_better={"accuracy": True, "loss": False},
    evaluate=evaluate,
    scratch_terms=scratch,
    percent=frozenset({"accuracy"}),
)


def _token_scratch_terms() -> list[Term]:
    return [Term("ce", "token_ce", weight=1.0, teacher=None)]


LANGUAGE_MODELLING = Task(
    name="language_modelling",
    metrics=("perplexity", "token_accuracy"),
    higher_is_better={"perplexity": False, "token_accuracy": True, "loss": False},
    evaluate=evaluate_lm,
    scratch_terms=_token_scratch_terms,
    percent=frozenset({"token_accuracy"}),
    samples=lm_samples,
)

# Language models that read different tokenizers (``data.options.student_tokenizer``): scored
# in bits per byte, the one measure their different tokens share; no samples (one codec
# cannot write both models' tokens).
LANGUAGE_MODELLING_ACROSS_TOKENIZERS = Task(
    name="language_modelling",
    metrics=("bits_per_byte",),
    higher_is_better={
        "bits_per_byte": False,
        "perplexity": False,
        "token_accuracy": True,
        "loss": False,
    },
    evaluate=evaluate_bits_per_byte,
    scratch_terms=_token_scratch_terms,
)


def _rating_scratch_terms() -> list[Term]:
    """A recommender's own objective: rating regression on the rated items plus NCF's
    preference cross-entropy against sampled unrated items (kdistill.losses.ranking)."""
    return [
        Term("rating", "rating_mse", weight=1.0, teacher=None),
        Term("preference", "preference_bce", weight=1.0, teacher=None),
    ]


# Recommendation: a user and candidate items in, (rating, preference logit) per candidate out.
# Evaluated leave-one-out by timestamp against 99 sampled unrated items
# (kdistill.evaluation.ranking).
RATING = Task(
    name="rating",
    metrics=("hr@10", "ndcg@10", "rmse"),
    higher_is_better={"hr@10": True, "ndcg@10": True, "rmse": False},
    evaluate=evaluate_ranking,
    scratch_terms=_rating_scratch_terms,
)

TASKS: dict[str, Task] = {
    "classification": CLASSIFICATION,
    "language_modelling": LANGUAGE_MODELLING,
    "rating": RATING,
}


def task_for(splits) -> Task:
    """The task a recipe's data is scored by: its ``DataSplits.task``, but language models
    across tokenizers in bits per byte."""
    if splits.task == LANGUAGE_MODELLING.name and splits.identity.get("student_tokenizer"):
        return LANGUAGE_MODELLING_ACROSS_TOKENIZERS
    return TASKS[splits.task]


def task_of(batch: dict, scores: tuple[int, ...]) -> Task:
    """The task of data a Python user hands over (a recipe's dataset names its own), from a
    batch and the shape of the student's ``scores`` on it: lists of candidate items
    (``{"user", "items"}`` inputs) are ranked, a score vector per position is a language
    model's, one per sample a classifier's."""
    inputs = batch["input"]
    if isinstance(inputs, Mapping) and "items" in inputs:
        return RATING
    return LANGUAGE_MODELLING if len(scores) == 3 else CLASSIFICATION
