"""Small VGG-style convolutional networks with width and depth knobs."""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.models.settings import records_settings


def _conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(
                in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Stages of [Conv3×3 → BN → ReLU] × ``convs_per_stage`` → MaxPool, then global average
    pooling (``pool="avg"``) or flattening (``pool="flatten"``, LeNet-style), an optional hidden
    fully connected layer, and a linear head. Stage ``k`` has ``width · 2**k`` channels.

    Stages are named ``stages.0``, ``stages.1``, ... so feature taps can address them;
    ``forward_features`` returns the vector in front of the head.
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        width: int = 32,
        depth: int = 2,
        convs_per_stage: int = 1,
        pool: str = "avg",
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        channels = [input_shape[0]] + [width * 2**k for k in range(depth)]
        self.stages = nn.Sequential(
            *(_conv_block(channels[k], channels[k + 1], convs_per_stage) for k in range(depth))
        )
        if pool == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = channels[-1]
        elif pool == "flatten":
            self.pool = nn.Flatten()
            size = [s // 2**depth for s in input_shape[1:]]
            features = channels[-1] * size[0] * size[1]
        else:
            raise ValueError(f"pool={pool!r}: choose avg or flatten")
        self.fc = (
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True))
            if hidden
            else nn.Identity()
        )
        features = hidden or features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes)
        self.num_classes = num_classes
        self.num_features = features
        # Module names of intermediate feature maps, shallow to deep, for hint/attention terms.
        self.hint_layers = tuple(f"stages.{k}" for k in range(depth))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(x)))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def cnn(**kwargs) -> CNN:
    """CNN with knobs ``width`` (first-stage channels) and ``depth`` (stages)."""
    return CNN(**kwargs)


def cnn_tiny(**kwargs) -> CNN:
    """Two stages of 8 and 16 channels (~1.6k parameters)."""
    return CNN(**{"width": 8, "depth": 2, **kwargs})


def cnn_small(**kwargs) -> CNN:
    """Two stages of 16 and 32 channels."""
    return CNN(**{"width": 16, "depth": 2, **kwargs})


def lenet(**kwargs) -> CNN:
    """LeNet-style: 32 and 64 channels, flattened into a 128-unit hidden layer (a small teacher)."""
    return CNN(
        **{"width": 32, "depth": 2, "pool": "flatten", "hidden": 128, "dropout": 0.25, **kwargs}
    )


def cnn_large(**kwargs) -> CNN:
    """Three stages of 64, 128, 256 channels, two convolutions each (a teacher)."""
    return CNN(**{"width": 64, "depth": 3, "convs_per_stage": 2, **kwargs})


__all__ = ["CNN", "cnn", "cnn_large", "cnn_small", "cnn_tiny", "lenet"]
