"""The module a decomposed layer becomes: an ``nn.Sequential`` of two convs (or two Linears).

Kept free of other chanprune imports so that :mod:`chanprune.io` can record and rebuild it.
"""
from __future__ import annotations

from torch import nn

__all__ = ["LowRank", "SCHEMES"]

# scheme -> the layer type it replaces (and that both of its parts are)
SCHEMES = {"channel": nn.Conv2d, "spatial": nn.Conv2d, "linear": nn.Linear}


class LowRank(nn.Sequential):
    """A rank-r factorisation of one layer, run as two layers in sequence.

    ``scheme``:

    * ``"channel"`` — k×k conv (C → r) then 1×1 conv (r → N, with the bias);
    * ``"spatial"`` — kh×1 conv (C → r) then 1×kw conv (r → N, with the bias);
    * ``"linear"``  — Linear (in → r) then Linear (r → out, with the bias).

    ``rank`` is read from the parts, so it stays right after channel pruning shrinks the inner width.
    """

    def __init__(self, scheme: str, first: nn.Module, second: nn.Module):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown low-rank scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        kind = SCHEMES[scheme]
        if type(first) is not kind or type(second) is not kind:
            raise ValueError(f"a {scheme!r} LowRank is made of two {kind.__name__} layers, "
                             f"got {type(first).__name__} and {type(second).__name__}")
        super().__init__(first, second)
        self.scheme = scheme

    @property
    def rank(self) -> int:
        first = self[0]
        return int(first.out_features if isinstance(first, nn.Linear) else first.out_channels)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, rank={self.rank}"
