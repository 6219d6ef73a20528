"""Wide residual networks, WRN-depth-k.

Zagoruyko, Komodakis. "Wide Residual Networks", BMVC 2016, arXiv:1605.07146: pre-activation
basic blocks (BN → ReLU → conv), depth = 6n + 4, three stages of 16k, 32k, 64k channels after a
16-channel stem, a final BN → ReLU, global average pooling and one linear layer.
``wrn_40_2`` → ``wrn_16_2`` is one of the CRD / RepDistiller CIFAR-100 pairs.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.models.init import init_cnn_weights
from kdistill.models.settings import records_settings


class PreActBlock(nn.Module):
    """BN → ReLU → 3×3 conv, twice, plus the input (projected by a 1×1 conv when shapes differ)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.projection = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        # As in the authors' code, a projection reads the pre-activated input, an identity
        # shortcut the raw one: the first block of a stage thus normalises the stage's input once.
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(nn.Module):
    """Stem → ``block1`` … ``block3`` → BN → ReLU → pool → head.

    ``hint_layers`` are the three stage outputs (pre-activation values, as the stages hand them on).
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        depth: int = 16,
        widen_factor: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks_per_stage = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(input_shape[0], channels[0], 3, padding=1, bias=False)
        for index, stride in enumerate((1, 2, 2), start=1):
            in_channels, out_channels = channels[index - 1], channels[index]
            blocks = [PreActBlock(in_channels, out_channels, stride, dropout)]
            blocks += [
                PreActBlock(out_channels, out_channels, 1, dropout)
                for _ in range(blocks_per_stage - 1)
            ]
            self.add_module(f"block{index}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels[3], num_classes)
        self.num_classes = num_classes
        self.num_features = channels[3]
        self.hint_layers = ("block1", "block2", "block3")
        init_cnn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.pool(self.relu(self.bn(x)))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def wrn_16_2(**kwargs) -> WideResNet:
    """WRN-16-2 (Zagoruyko & Komodakis 2016): 2 blocks per stage of 32-64-128; 0.69M params."""
    return WideResNet(**{"depth": 16, "widen_factor": 2, **kwargs})


def wrn_40_2(**kwargs) -> WideResNet:
    """WRN-40-2 (Zagoruyko & Komodakis 2016): 6 blocks per stage of 32-64-128; 2.24M params."""
    return WideResNet(**{"depth": 40, "widen_factor": 2, **kwargs})


__all__ = ["PreActBlock", "WideResNet", "wrn_16_2", "wrn_40_2"]
