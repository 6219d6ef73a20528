"""CIFAR ResNets: the 6n+2-layer networks of He et al. (2016) and the 4× wider variants of the
CRD benchmark.

He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385, section 4.2: a 3×3 stem, three stages of ``n`` basic blocks at 16, 32, 64
channels (stride 2 between stages), global average pooling and one linear layer.
Tian, Krishnan, Isola. "Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699,
adds ``resnet8x4`` / ``resnet32x4`` (stem 32, stages 64, 128, 256): the teacher/student pair that
RepDistiller and mdistiller report most often.

Pooling is adaptive, so 28×28 inputs (7×7 before pooling) work as well as 32×32 (8×8).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.models.init import init_cnn_weights
from kdistill.models.settings import records_settings


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection; a 1×1 projection when the shape changes.

    Every ReLU is its own (non in-place) module: a tap on ``bn2`` must not see its value
    overwritten by a later in-place activation, and a tap on ``relu2`` reads the block's output.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        # Projection shortcut (option B of the paper) as in the distillation benchmarks' code;
        # the paper's CIFAR models used zero-padding (option A), which has no parameters.
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem → ``layer1`` … ``layer3`` (``blocks_per_stage`` basic blocks each) → pool → head.

    ``widths`` = (stem, stage 1, stage 2, stage 3) channels; stages 2 and 3 halve the resolution.
    ``hint_layers`` are the three stage outputs.
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        blocks_per_stage: int = 3,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
    ):
        super().__init__()
        stem, *stages = widths
        self.conv1 = nn.Conv2d(input_shape[0], stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_channels = stem
        for index, (channels, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            blocks = [BasicBlock(in_channels, channels, stride)]
            blocks += [BasicBlock(channels, channels) for _ in range(blocks_per_stage - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_channels, num_classes)
        self.num_classes = num_classes
        self.num_features = in_channels
        self.hint_layers = ("layer1", "layer2", "layer3")
        init_cnn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def resnet8(**kwargs) -> CifarResNet:
    """ResNet-8 (He et al. 2016 family): 1 block per stage of 16-32-64 channels; 0.08M params."""
    return CifarResNet(**{"blocks_per_stage": 1, "widths": (16, 16, 32, 64), **kwargs})


def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 (He et al. 2016): 3 blocks per stage of 16-32-64 channels; 0.27M params."""
    return CifarResNet(**{"blocks_per_stage": 3, "widths": (16, 16, 32, 64), **kwargs})


def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 (He et al. 2016): 9 blocks per stage of 16-32-64 channels; 0.86M params."""
    return CifarResNet(**{"blocks_per_stage": 9, "widths": (16, 16, 32, 64), **kwargs})


def resnet8x4(**kwargs) -> CifarResNet:
    """ResNet-8×4 (Tian et al. 2020): 1 block per stage of 64-128-256 channels; 1.21M params."""
    return CifarResNet(**{"blocks_per_stage": 1, "widths": (32, 64, 128, 256), **kwargs})


def resnet32x4(**kwargs) -> CifarResNet:
    """ResNet-32×4 (Tian et al. 2020): 5 blocks per stage of 64-128-256 channels; 7.41M params."""
    return CifarResNet(**{"blocks_per_stage": 5, "widths": (32, 64, 128, 256), **kwargs})


__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet8",
    "resnet8x4",
    "resnet20",
    "resnet32x4",
    "resnet56",
]
