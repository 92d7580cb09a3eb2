"""The criterion registry, the config class each criterion gets, and the context that computes
calibration statistics once per prune.

``@register_criterion("l1", config="L1Config", doc=...)`` registers the score function and creates its
config class, a :class:`CriterionConfig` with the criterion fixed (``L1Config(target_macs=0.5)``).
:class:`CriterionConfig` itself takes any registered criterion by name
(``CriterionConfig(criterion="l1", ...)`` prunes as ``L1Config(...)`` does).
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from ..config import PruneConfig
from ..errors import ConfigError
from ..graph import ChannelGroup, PruningGraph

Criterion = Callable[[ChannelGroup, "ScoreContext"], torch.Tensor]
CRITERIA: dict[str, Criterion] = {}
CONFIGS: dict[str, type] = {}  # criterion name → its config class


@dataclass
class CriterionConfig(PruneConfig):
    """Score channels with a criterion, remove the lowest under the chosen allocation."""

    method: ClassVar[str] = "criterion"
    generic: ClassVar[bool] = True  # not listed by name in chanprune.methods.METHODS: the criterion names it
    criterion: str = "l1"

    def __post_init__(self):
        super().__post_init__()
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(sorted(CRITERIA))}.")
        own = type(self).__dict__.get("method")
        if own in CRITERIA and self.criterion != own:
            raise ConfigError(f"{type(self).__name__} scores by {own!r}; for {self.criterion!r} use "
                              f"{CONFIGS[self.criterion].__name__} or CriterionConfig(criterion={self.criterion!r}).")


def register_criterion(name: str, *, config: str | None = None, doc: str | None = None):
    """Decorator: register ``fn(group, ctx) -> scores`` as criterion ``name``; with ``config``, also create
    the config class of that name (a :class:`CriterionConfig` whose criterion is ``name``), documented by
    ``doc``, in :data:`CONFIGS`."""

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        if config is not None:
            cls = make_dataclass(config, [("criterion", str, field(default=name))], bases=(CriterionConfig,),
                                 namespace={"method": name, "__doc__": doc or fn.__doc__,
                                            "__module__": "chanprune.criteria"})
            CONFIGS[name] = cls
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
