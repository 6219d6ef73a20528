"""Multi-layer perceptron over flattened inputs: the smallest student that still distils well."""

from __future__ import annotations

import math

from torch import Tensor, nn

from kdistill.models.settings import records_settings


class MLP(nn.Module):
    """Flatten → [Linear → ReLU → Dropout] × depth → Linear.

    ``forward_features`` returns the last hidden activation (the penultimate layer), so relation
    losses and probes need no hook.
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        width: int = 64,
        depth: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)
        self.num_classes = num_classes
        self.num_features = in_features
        # Module names of intermediate features, shallow to deep, for hint/attention terms.
        self.hint_layers = tuple(f"features.{3 * i + 1}" for i in range(depth))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def mlp(**kwargs) -> MLP:
    """MLP with knobs ``width`` (hidden units) and ``depth`` (hidden layers)."""
    return MLP(**kwargs)


def mlp_tiny(**kwargs) -> MLP:
    """One hidden layer of 32 units (~25k parameters on 28×28 inputs)."""
    return MLP(**{"width": 32, "depth": 1, **kwargs})


def mlp_large(**kwargs) -> MLP:
    """Two hidden layers of 1200 units, the teacher MLP of Hinton et al. (2015), with dropout."""
    return MLP(**{"width": 1200, "depth": 2, "dropout": 0.2, **kwargs})


__all__ = ["MLP", "mlp", "mlp_large", "mlp_tiny"]
