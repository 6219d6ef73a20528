"""ShuffleNetV2 (1×) for small images.

Ma, Zhang, Zheng, Sun. "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018, arXiv:1807.11164. Each unit splits the channels in two halves, transforms
one (1×1 → 3×3 depthwise → 1×1) and keeps the other, concatenates them and shuffles the channels
so that information crosses between the halves in the next unit. A down-sampling unit
transforms both halves with stride 2 and so doubles the channels.

The CIFAR form of the distillation benchmarks (RepDistiller's ``ShuffleV2``): the 1× widths
116, 232, 464 and 1,024 of Table 5, stage units 4, 8, 4, but a 1×1 stem of 24 channels without
stride or max-pooling, so a 32×32 image reaches the last stage at 4×4 (a 28×28 one at 4×4 too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdistill.models.init import init_cnn_weights
from kdistill.models.settings import records_settings

STAGE_CHANNELS = (116, 232, 464)
STAGE_UNITS = (4, 8, 4)  # the first unit of each stage down-samples


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups: (g·c) → (c·g), a transpose of a reshape."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _pointwise(in_channels: int, out_channels: int) -> list[nn.Module]:
    """1×1 conv → BN → ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]


def _depthwise(channels: int, stride: int) -> list[nn.Module]:
    """3×3 depthwise conv → BN, without activation (as in the paper's units)."""
    conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)
    return [conv, nn.BatchNorm2d(channels)]


def _branch(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1×1 conv → BN → ReLU → 3×3 depthwise (stride) → BN → 1×1 conv → BN → ReLU."""
    return nn.Sequential(
        *_pointwise(in_channels, out_channels),
        *_depthwise(out_channels, stride),
        *_pointwise(out_channels, out_channels),
    )


class ShuffleUnit(nn.Module):
    """Keep half of the channels, transform the other half, concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = _branch(channels // 2, channels // 2, stride=1)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([kept, self.branch(transformed)], dim=1))


class DownsampleUnit(nn.Module):
    """Two branches (Fig. 3d of the paper) both read the whole input at stride 2; their outputs,
    half of ``out_channels`` each, are concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(*_depthwise(in_channels, 2), *_pointwise(in_channels, half))
        self.right = _branch(in_channels, half, stride=2)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(nn.Module):
    """Stem → ``layer1`` … ``layer3`` → 1×1 conv → pool → head; ``hint_layers`` are the stages."""

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        stage_channels: tuple[int, ...] = STAGE_CHANNELS,
        stage_units: tuple[int, ...] = STAGE_UNITS,
        last_channels: int = 1024,
    ):
        super().__init__()
        in_channels = 24
        self.stem = nn.Sequential(*_pointwise(input_shape[0], in_channels))
        for index, (channels, units) in enumerate(zip(stage_channels, stage_units), start=1):
            stage = [DownsampleUnit(in_channels, channels)]
            stage += [ShuffleUnit(channels) for _ in range(units - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        self.conv = nn.Sequential(*_pointwise(in_channels, last_channels))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(last_channels, num_classes)
        self.num_classes = num_classes
        self.num_features = last_channels
        self.hint_layers = tuple(f"layer{i}" for i in range(1, len(stage_channels) + 1))
        init_cnn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.hint_layers:
            x = getattr(self, name)(x)
        return self.pool(self.conv(x))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def shufflenetv2(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1× (Ma et al. 2018): 4-8-4 units of 116-232-464 channels; 1.26M params."""
    return ShuffleNetV2(**kwargs)


__all__ = ["ChannelShuffle", "DownsampleUnit", "ShuffleNetV2", "ShuffleUnit", "shufflenetv2"]
