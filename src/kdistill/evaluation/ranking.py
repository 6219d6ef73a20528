"""Scoring a recommender: HR@k and NDCG@k of a held-out item ranked among sampled candidates,
and RMSE of its predicted rating.

Protocol (He et al., "Neural Collaborative Filtering", WWW 2017, arXiv:1708.05031), as the
MovieLens loader builds the split: leave-one-out by timestamp per user (the last interaction is
the test item, the one before it the validation item), each ranked against 99 items the user
never rated, sampled once with a fixed seed. A candidate list is (held-out item, 99 negatives);
the model scores each as (rating, preference logit), ranks by the preference logit, and HR@10 /
NDCG@10 average over users; RMSE is over the held-out ratings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdistill.evaluation.classification import predict
from kdistill.evaluation.paired import Outcomes

RATING, PREFERENCE = 0, 1


def held_out_rank(scores: Tensor) -> Tensor:
    """0-based rank of column 0 within each row of ``scores`` (N, L), higher score first.

    Ties count against the held-out item (a model that scores everything equally ranks it last,
    not first), so the metrics can never be inflated by constant scores.
    """
    return (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def hit_rate(ranks: Tensor, k: int = 10) -> float:
    """HR@k: the fraction of users whose held-out item is among the top ``k``."""
    return (ranks < k).double().mean().item()


def ndcg(ranks: Tensor, k: int = 10) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) when it is in the top ``k``, else 0
    (the ideal DCG is 1), averaged over users."""
    gains = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gains, torch.zeros_like(gains)).mean().item()


def rmse(predicted: Tensor, actual: Tensor) -> float:
    return torch.sqrt(torch.mean((predicted.double() - actual.double()) ** 2)).item()


def evaluate_ranking(
    model, loader, accelerator=None, *, k: int = 10, outcomes: bool = False
) -> dict:
    """HR@k, NDCG@k (by the preference logit) and RMSE (of the rating) on held-out candidate
    lists: samples whose ``input`` is ``{"user", "items"}`` with the held-out item first and
    whose ``target`` holds its rating first. See the module docstring for the protocol.
    With ``outcomes``, also each user's hit (HR@k, the headline), for paired comparisons."""
    scores, targets = predict(model, loader, accelerator)  # (N, L, 2), (N, L)
    ranks = held_out_rank(scores[..., PREFERENCE])
    result = {
        f"hr@{k}": hit_rate(ranks, k),
        f"ndcg@{k}": ndcg(ranks, k),
        "rmse": rmse(scores[:, 0, RATING], targets[:, 0]),
        "n": len(targets),
    }
    if outcomes:
        result["outcomes"] = Outcomes.of((ranks < k).numpy(), unit="users")
    return result


__all__ = ["evaluate_ranking", "held_out_rank", "hit_rate", "ndcg", "rmse"]
