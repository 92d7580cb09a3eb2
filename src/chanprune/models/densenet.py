"""DenseNet-BC-40 (growth rate 12) for small inputs.

Reference: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017 (arXiv:1608.06993), section 3 (DenseNet-BC: bottleneck
layers and compression) and the CIFAR setup of section 4.

Layout (defaults): a 3x3 stem conv with ``2 * growth_rate`` filters, three dense blocks of
``block_layers`` = 6 bottleneck layers (BN-ReLU-1x1 conv to ``4 * growth_rate`` - BN-ReLU-3x3
conv to ``growth_rate``, output concatenated to the input with ``torch.cat``), transitions
(BN-ReLU-1x1 conv with compression 0.5, 2x2 average pool) between blocks, then BN-ReLU, global
average pooling and a Linear classifier. Depth = 3 * 6 * 2 + 4 = 40. The layers are
pre-activation, so every conv output is normalised by the BN of the layer(s) that consume it.
The concatenations are plain ``torch.cat`` calls that torch-pruning traces (it prunes the
matching slices of every later BN and conv input). Any input of at least 4x4 works.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from .registry import check_multiplier, init_weights, register_model

__all__ = ["DenseNetBC", "densenet40"]


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        inter = bn_size * growth_rate
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], 1)


class _Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNetBC(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12,
                 block_layers: int = 6, num_blocks: int = 3, compression: float = 0.5, bn_size: int = 4) -> None:
        super().__init__()
        for what, v, hi in (("growth_rate", growth_rate, 64), ("block_layers", block_layers, 64),
                            ("num_blocks", num_blocks, 5), ("bn_size", bn_size, 16)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise ModelError(f"{what} must be an integer from 1 to {hi}, got {v!r}; pass a small positive integer")
        compression = check_multiplier("compression", compression, maximum=1.0)
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for b in range(num_blocks):
            block = []
            for _ in range(block_layers):
                block.append(_Bottleneck(c, growth_rate, bn_size))
                c += growth_rate
            stages.append(nn.Sequential(*block))
            if b != num_blocks - 1:
                c_out = max(1, int(math.floor(c * compression)))
                stages.append(_Transition(c, c_out))
                c = c_out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        x = self.relu(self.bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("densenet40", family="densenet",
                description="DenseNet-BC-40, growth 12 (Huang et al. 2017): 3 dense blocks x 6 bottlenecks, "
                            "compression 0.5.")
def densenet40(num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12, block_layers: int = 6,
               compression: float = 0.5) -> nn.Module:
    """DenseNet-BC-40 with growth rate 12 for CIFAR-size inputs."""
    return DenseNetBC(num_classes=num_classes, in_channels=in_channels, growth_rate=growth_rate,
                      block_layers=block_layers, compression=compression)
