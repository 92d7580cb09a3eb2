"""LeNet-5 (modernised: ReLU, max pooling, optional BN).

Reference: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to
Document Recognition", Proc. IEEE 86(11), 1998.

conv(6, 5x5, padding 2) [-BN] -ReLU - maxpool 2 - conv(16, 5x5) [-BN] -ReLU - maxpool 2 -
adaptive average pool to 5x5 - FC 120 - ReLU - FC 84 - ReLU - FC num_classes. On a 28x28
input this is exactly the classic 28-14-10-5 layout (the adaptive pool is then the identity).
For inputs smaller than 10x10 the map before the second conv is zero-padded up to 5x5, and the
pools use ``ceil_mode`` and leave a 1x1 map alone, so any input of at least 1x1 works.
With ``bn=True`` (default) the convs have no bias and are followed by BatchNorm2d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .registry import register_model
from .vgg import SafeMaxPool2d

__all__ = ["LeNet5", "PadToMin", "lenet5"]


class PadToMin(nn.Module):
    """Zero-pad the spatial map symmetrically up to ``min_size`` x ``min_size``; identity if large enough."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.min_size = int(min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = max(0, self.min_size - h), max(0, self.min_size - w)
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, bn: bool = True) -> None:
        super().__init__()
        if not isinstance(bn, bool):
            raise ModelError(f"bn must be True or False, got {bn!r}; pass a bool")

        def block(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 5, padding=padding, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(c_out))
            return layers + [nn.ReLU(), SafeMaxPool2d(2, 2)]

        self.features = nn.Sequential(*block(in_channels, 6, 2), PadToMin(5), *block(6, 16, 0))
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("lenet5", family="lenet",
                description="LeNet-5 (LeCun et al. 1998) with ReLU, max pooling and optional BN.")
def lenet5(num_classes: int = 10, in_channels: int = 3, bn: bool = True) -> nn.Module:
    """LeNet-5 with ReLU, max pooling and (by default) BN after each conv."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, bn=bn)
