"""CIFAR-style ResNets (resnet20/32/56/110).

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385), section 4.2: a 3x3 conv with 16 filters, then three stages of
``n`` basic blocks with 16, 32 and 64 filters (``depth = 6n + 2``), stride 2 at the first block
of stages 2 and 3, global average pooling and a fully connected classifier.

Shortcuts that change shape are projections (1x1 conv + BN, the paper's "option B"), all
others are identity. Weights use Kaiming (He) normal initialisation. ``width`` scales every
channel count (rounded, at least 1). Forward never refers to channel counts, so the network
keeps working after channel pruning.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .registry import check_multiplier, init_weights, register_model

__all__ = ["CifarResNet", "BasicBlock", "Bottleneck", "resnet20", "resnet32", "resnet56", "resnet110",
           "resnet29_bottleneck", "resnet38_bottleneck"]


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity where the shape stays, else a 1×1 projection + BN (the paper's option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN (4× wider output), plus the shortcut, then ReLU (He et al. 2016, §4.1)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU()
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages (16/32/64 planes; ×4 outputs with bottlenecks), global pooling, classifier."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 bottleneck: bool = False) -> None:
        super().__init__()
        per_block = 9 if bottleneck else 6
        if (depth - 2) % per_block != 0 or depth < per_block + 2:
            kind = "9n+2 (bottleneck)" if bottleneck else "6n+2"
            raise ModelError(f"CIFAR ResNet depth must be {kind} with n >= 1, got {depth}; "
                             + ("use 29 or 38" if bottleneck else "use 20, 32, 56 or 110"))
        width = check_multiplier("width", width)
        n = (depth - 2) // per_block
        block = Bottleneck if bottleneck else BasicBlock
        expansion = getattr(block, "expansion", 1)
        c1, c2, c3 = (_scaled(c, width) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(block, c1, c1, n, stride=1)
        self.layer2 = self._stage(block, c1 * expansion, c2, n, stride=2)
        self.layer3 = self._stage(block, c2 * expansion, c3, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3 * expansion, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(block: type, in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        expansion = getattr(block, "expansion", 1)
        layers = [block(in_planes, planes, stride)]
        layers += [block(planes * expansion, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _make(depth: int):
    def builder(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, width=width)

    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), {(depth - 2) // 6} basic blocks per stage."
    return register_model(f"resnet{depth}", family="resnet", description=builder.__doc__)(builder)


def _make_bottleneck(depth: int):
    def builder(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, width=width, bottleneck=True)

    name = f"resnet{depth}_bottleneck"
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"CIFAR ResNet-{depth} with bottleneck blocks (He et al. 2016), {(depth - 2) // 9} per stage."
    return register_model(name, family="resnet", description=builder.__doc__)(builder)


resnet20 = _make(20)
resnet32 = _make(32)
resnet56 = _make(56)
resnet110 = _make(110)
resnet29_bottleneck = _make_bottleneck(29)
resnet38_bottleneck = _make_bottleneck(38)
