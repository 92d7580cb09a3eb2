"""The criterion registry and the context that lazily computes calibration statistics once per prune."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..graph import ChannelGroup, PruningGraph

Criterion = Callable[[ChannelGroup, "ScoreContext"], torch.Tensor]
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str):
    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion {name!r}; choose one of {', '.join(sorted(CRITERIA))}.")
    return CRITERIA[name]


@dataclass
class ScoreContext:
    """What a criterion may need: the model, its graph, calibration batches and a seed.

    Data-driven statistics (gate gradients, feature ranks) are computed on first use for all groups at
    once and cached, so scoring every group costs one pass over the calibration data.
    """

    model: nn.Module
    graph: PruningGraph
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    seed: int = 0
    cache: dict = field(default_factory=dict)

    def require_batches(self, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self.batches:
            raise ConfigError(f"the {what} criterion needs calibration data; pass data=... to prune().")
        return self.batches
