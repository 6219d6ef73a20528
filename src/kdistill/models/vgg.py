"""VGG for small images, with batch normalisation.

Simonyan, Zisserman. "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, arXiv:1409.1556: stacks of 3×3 convolutions in five blocks of 64, 128, 256, 512, 512
channels. The CIFAR form used by the CRD / RepDistiller benchmarks adds BatchNorm after every
convolution, max-pools after the first three blocks only (a 32×32 input reaches block 4 at 4×4,
a 28×28 one at 3×3), and replaces the three fully connected layers by global average pooling
and one linear layer. ``vgg13`` has two convolutions per block (configuration B of the paper),
``vgg8`` one.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdistill.models.init import init_cnn_weights
from kdistill.models.settings import records_settings

WIDTHS = (64, 128, 256, 512, 512)


def _block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),  # not in place: a tap on the BatchNorm keeps its own value
        ]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``block0`` … ``block4`` of ``convs_per_block`` [conv → BN → ReLU], max-pooling after blocks
    0-2, then global average pooling and the head. ``hint_layers`` are the five block outputs."""

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        convs_per_block: int = 1,
    ):
        super().__init__()
        in_channels = input_shape[0]
        for index, channels in enumerate(WIDTHS):
            self.add_module(f"block{index}", _block(in_channels, channels, convs_per_block))
            in_channels = channels
        self.pool0, self.pool1, self.pool2 = (nn.MaxPool2d(2) for _ in range(3))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_channels, num_classes)
        self.num_classes = num_classes
        self.num_features = in_channels
        self.hint_layers = tuple(f"block{index}" for index in range(len(WIDTHS)))
        init_cnn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.pool(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def vgg8(**kwargs) -> VGG:
    """VGG-8 with BN: one 3×3 conv per block of 64-128-256-512-512 channels; 3.92M params."""
    return VGG(**{"convs_per_block": 1, **kwargs})


def vgg13(**kwargs) -> VGG:
    """VGG-13 with BN (Simonyan & Zisserman config B): two 3×3 convs per block; 9.41M params."""
    return VGG(**{"convs_per_block": 2, **kwargs})


__all__ = ["VGG", "vgg8", "vgg13"]
