"""TinyVGG: a small VGG-style conv trunk followed by a real fully connected head.

The setting of partition pruning (Shahhosseini et al., arXiv 1901.11391, "TinyVGG16"): most of the
parameters sit in wide FC layers, which are the ones cut into parts that run on separate devices.
The paper gives no exact layout; this one keeps VGG's pattern of 3×3 convs with BN and ReLU in stages
separated by 2×2 max pools — (16, 16, M, 32, 32, M, 64, 64, M) at ``width=1`` — then an adaptive
average pool to 4×4 and three Linear layers (``fc`` → ``fc`` → classes) with ReLU and dropout.
On a 28×28 input the pools give 28 → 14 → 7 → 4, so the adaptive pool is the identity there.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .registry import check_multiplier, init_weights, register_model
from .vgg import vgg_features

__all__ = ["TinyVGG", "tinyvgg"]

TINYVGG_CFG = (16, 16, "M", 32, 32, "M", 64, 64, "M")


class TinyVGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, fc: int = 512,
                 dropout: float = 0.3) -> None:
        super().__init__()
        if isinstance(fc, bool) or not isinstance(fc, int) or not 1 <= fc <= 65536:
            raise ModelError(f"fc must be a positive integer (the width of the hidden FC layers), got {fc!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ModelError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.features, c_in = vgg_features(TINYVGG_CFG, in_channels, width)
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * 16, fc), nn.ReLU(), nn.Dropout(float(dropout)),
            nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(float(dropout)),
            nn.Linear(fc, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("tinyvgg", family="vgg",
                description="TinyVGG: six 3×3 convs with BN in three stages, then two wide FC layers (partition pruning's setting).")
def tinyvgg(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, fc: int = 512, dropout: float = 0.3) -> nn.Module:
    """A small VGG-style conv trunk and a fully connected head of two ``fc``-wide hidden layers."""
    width = check_multiplier("width", width)
    return TinyVGG(num_classes=num_classes, in_channels=in_channels, width=width, fc=fc, dropout=dropout)
