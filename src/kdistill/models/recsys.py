"""Neural matrix factorisation (NeuMF) for ratings and ranking.

He, Liao, Zhang, Nie, Hu, Chua, "Neural Collaborative Filtering", WWW 2017, arXiv:1708.05031:
a generalised matrix factorisation branch (element-wise product of user and item embeddings)
beside an MLP over their concatenation, fused by a linear layer. Here the fused layer has two
outputs per (user, item): a predicted rating and a preference logit (did the user interact), so
one model is scored by RMSE and by HR@10 / NDCG@10.

Inputs are keyword tensors ``user`` (B,) and ``items`` (B, L): every user is scored against a
list of candidate items, and the output is (B, L, 2). ``input_shape`` is (number of users,
number of items), the sizes of the two id vocabularies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdistill.models.settings import records_settings


class NeuMF(nn.Module):
    """NeuMF with a GMF branch of ``gmf_dim`` and an MLP branch of ``mlp_dim`` embeddings
    followed by ``mlp_layers`` (ReLU), fused into (rating, preference) by ``head``.

    ``gmf`` and ``mlp`` (modules) hold the two branches' per-candidate features, the tap points
    for feature terms; ``forward_features`` returns their concatenation (B, L, num_features).
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 2,
        input_shape: tuple[int, int] = (943, 1682),
        gmf_dim: int = 32,
        mlp_dim: int = 32,
        mlp_layers: tuple[int, ...] = (64, 32, 16),
        dropout: float = 0.0,
        rating_offset: float = 3.0,
    ):
        super().__init__()
        num_users, num_items = int(input_shape[0]), int(input_shape[-1])
        self.user_gmf = nn.Embedding(num_users, gmf_dim)
        self.item_gmf = nn.Embedding(num_items, gmf_dim)
        self.user_mlp = nn.Embedding(num_users, mlp_dim)
        self.item_mlp = nn.Embedding(num_items, mlp_dim)
        self.gmf = nn.Identity()
        layers: list[nn.Module] = []
        width = 2 * mlp_dim
        for size in mlp_layers:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.num_features = gmf_dim + width
        self.head = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes
        self.hint_layers = ("gmf", "mlp")
        for embedding in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(embedding.weight, std=0.01)  # NCF's initialisation
        # Start the rating output at the middle of the star scale instead of 0: otherwise the
        # first epochs only learn the mean rating.
        with torch.no_grad():
            self.head.bias[0] = rating_offset

    def forward_features(self, user: Tensor, items: Tensor) -> Tensor:
        if items.dim() == 1:
            items = items[:, None]
        user = user.reshape(-1, 1).expand_as(items)
        gmf = self.gmf(self.user_gmf(user) * self.item_gmf(items))
        mlp = self.mlp(torch.cat([self.user_mlp(user), self.item_mlp(items)], dim=-1))
        return torch.cat([gmf, mlp], dim=-1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, user: Tensor, items: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(user, items))


def neumf(**kwargs) -> NeuMF:
    """NeuMF with knobs ``gmf_dim``, ``mlp_dim``, ``mlp_layers`` (default 32, 32, (64, 32, 16))."""
    return NeuMF(**kwargs)


def neumf_large(**kwargs) -> NeuMF:
    """NeuMF with 128-dimensional embeddings in both branches, MLP 128-64-32 (a teacher)."""
    return NeuMF(
        **{"gmf_dim": 128, "mlp_dim": 128, "mlp_layers": (128, 64, 32), "dropout": 0.1, **kwargs}
    )


def neumf_small(**kwargs) -> NeuMF:
    """NeuMF with 8-dimensional embeddings in both branches, MLP 16-8 (a student)."""
    return NeuMF(**{"gmf_dim": 8, "mlp_dim": 8, "mlp_layers": (16, 8), **kwargs})


__all__ = ["NeuMF", "neumf", "neumf_large", "neumf_small"]
