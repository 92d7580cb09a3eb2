"""CIFAR-style VGG-16 with batch normalisation (vgg16_bn).

Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556), configuration D; batch normalisation from S. Ioffe,
C. Szegedy, ICML 2015. The CIFAR variant (as used e.g. by Li et al., "Pruning Filters for
Efficient ConvNets", ICLR 2017) keeps the 13 conv layers (64,64,M,128,128,M,256x3,M,512x3,M,
512x3,M), each followed by BN and ReLU, and replaces the three large FC layers by global
average pooling and one ``Linear(512, num_classes)``.

Small inputs: the five 2x2 max-pools use ``ceil_mode=True`` (odd maps round up: 28 -> 14 -> 7 ->
4 -> 2 -> 1) and a pool whose input map is already 1x1 passes it through unchanged, so any input
of at least 1x1 (in particular 8x8, 28x28, 32x32) works without knowing the input size at
construction. ``width`` scales every channel count (rounded, at least 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_multiplier, init_weights, register_model

__all__ = ["VGG", "SafeMaxPool2d", "vgg16_bn", "VGG16_CFG"]

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class SafeMaxPool2d(nn.MaxPool2d):
    """``MaxPool2d(2, 2, ceil_mode=True)`` that leaves a 1x1 map as it is (max over one value)."""

    def __init__(self, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__(kernel_size=kernel_size, stride=stride, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 1 and x.shape[-2] == 1:
            return x
        return super().forward(x)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def vgg_features(cfg, in_channels: int, width: float) -> tuple[nn.Sequential, int]:
    """VGG's trunk from a config (channel counts and "M" for a 2×2 max pool): 3×3 conv, BN, ReLU per
    entry; returns it and its output channel count."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in cfg:
        if v == "M":
            layers.append(SafeMaxPool2d(2, 2))
        else:
            c_out = _scaled(int(v), width)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
    return nn.Sequential(*layers), c_in


class VGG(nn.Module):
    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.features, c_in = vgg_features(cfg, in_channels, width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_model("vgg16_bn", family="vgg",
                description="CIFAR VGG-16 with BN (Simonyan & Zisserman 2015), GAP + one Linear classifier.")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """CIFAR VGG-16 with BN, 13 conv layers, global average pooling and a single Linear classifier."""
    width = check_multiplier("width", width)
    return VGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels, width=width)
