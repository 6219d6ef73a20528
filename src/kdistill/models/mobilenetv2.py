"""MobileNetV2 for small images, at half width (the CIFAR-100 student of CRD and mdistiller).

Sandler, Howard, Zhu, Zhmoginov, Chen. "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv:1801.04381: inverted residual blocks (1×1 expansion by ``t`` → 3×3 depthwise →
linear 1×1 projection, residual when the shape is kept) in seven groups, a 1×1 convolution to
1,280 channels, global average pooling and one linear layer.

The CIFAR form of the distillation benchmarks (RepDistiller's ``mobile_half``): width multiplier
0.5 on every layer but the last (the paper keeps 1,280 channels for multipliers below one),
expansion ``t`` = 6, the second group at stride 1 instead of 2 (small images), plain ReLU, and
an expansion convolution even in the first group (t = 1), which the ImageNet model omits.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.models.init import init_cnn_weights
from kdistill.models.settings import records_settings

# (output channels at width 1, blocks, stride of the first block): Table 2 of the paper with
# the second group's stride lowered to 1 for small images. The first group expands by 1, the
# others by ``expansion``.
GROUPS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=kernel // 2,
        groups=groups,
        bias=False,
    )
    return [conv, nn.BatchNorm2d(out_channels)]


class InvertedResidual(nn.Module):
    """1×1 expand → ReLU → 3×3 depthwise (stride) → ReLU → 1×1 project, with no activation after
    the projection (the "linear bottleneck": a ReLU in the narrow space destroys information)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.conv = nn.Sequential(
            *_conv_bn(in_channels, hidden, 1),
            nn.ReLU(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU(),
            *_conv_bn(hidden, out_channels, 1),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """Stem (3×3, stride 2) → ``blocks.0`` … ``blocks.6`` → 1×1 conv → pool → head.

    ``hint_layers`` are the last group at each resolution: ``blocks.1``, ``blocks.2``,
    ``blocks.4``, ``blocks.6``.
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        width: float = 0.5,
        expansion: int = 6,
        last_channels: int = 1280,
    ):
        super().__init__()
        in_channels = int(32 * width)
        self.stem = nn.Sequential(*_conv_bn(input_shape[0], in_channels, 3, stride=2), nn.ReLU())
        groups = []
        for index, (channels, count, stride) in enumerate(GROUPS):
            out_channels = int(channels * width)
            t = 1 if index == 0 else expansion
            blocks = []
            for i in range(count):
                first_stride = stride if i == 0 else 1
                blocks.append(InvertedResidual(in_channels, out_channels, first_stride, t))
                in_channels = out_channels
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*groups)
        # The paper widens the last layer with multipliers above one and never narrows it.
        last = int(last_channels * width) if width > 1.0 else last_channels
        self.conv = nn.Sequential(*_conv_bn(in_channels, last, 1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(last, num_classes)
        self.num_classes = num_classes
        self.num_features = last
        self.hint_layers = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
        init_cnn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.blocks(self.stem(x))))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def mobilenetv2(**kwargs) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018) at width 0.5, expansion 6; 0.70M params."""
    return MobileNetV2(**kwargs)


__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]
