"""Initialisation for the CIFAR-style zoo (ResNet, WRN, VGG, MobileNetV2, ShuffleNetV2)."""

from __future__ import annotations

from torch import nn


def init_cnn_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, for ReLU), BatchNorm as the identity.

    PyTorch's default convolution init (uniform, a=√5) trains deep plain stacks such as
    resnet56 or vgg13 noticeably slower; He et al. (2015, "Delving Deep into Rectifiers",
    arXiv:1502.01852) derive this variance for ReLU networks, and the CIFAR reference code of
    RepDistiller and mdistiller uses it for all of these models. Linear layers keep PyTorch's
    default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


__all__ = ["init_cnn_weights"]
