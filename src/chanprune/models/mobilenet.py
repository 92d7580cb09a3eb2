"""MobileNetV2 for small (CIFAR-size) inputs.

Reference: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381), table 2.

Small-input variant: the stem 3x3 conv has stride 1 and the first two strided stages of the
(t, c, n, s) table (c = 24 and c = 32) use stride 1, so a 32x32 input reaches the classifier at
8x8 (an 8x8 input at 2x2). Inverted residual blocks: 1x1 expansion (skipped when t = 1),
depthwise 3x3, linear 1x1 projection, each followed by BN (ReLU6 after the first two); the input
is added when the block has stride 1 and as many input as output channels. ``width_mult``
scales channels as in the paper (rounded to a multiple of 8; the last 1x1 conv keeps 1280 for
``width_mult <= 1``). No dropout, so train and eval differ only in BN.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_multiplier, init_weights, register_model

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenetv2", "CIFAR_SETTING"]

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
CIFAR_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet model
    (6, 32, 3, 1),  # stride 2 in the ImageNet model
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10 %
        new_v += divisor
    return new_v


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6())
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn(c_in, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        layers += _conv_bn(hidden, c_out, 1, act=False)
        self.conv = nn.Sequential(*layers)
        # Decided at construction: pruning keeps the two ends of a residual coupled.
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 setting=CIFAR_SETTING) -> None:
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, c_in, 3, stride=1))]
        for t, c, n, s in setting:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers.append(nn.Sequential(*_conv_bn(c_in, last, 1)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_model("mobilenetv2", family="mobilenet",
                description="MobileNetV2 (Sandler et al. 2018), small-input variant with stride-1 stem and stages 2-3.")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 for CIFAR-size inputs."""
    width_mult = check_multiplier("width_mult", width_mult)
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)
