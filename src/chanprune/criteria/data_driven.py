"""Criteria that need calibration data: first-order Taylor (from the gate-gradient matrix) and HRank."""
from __future__ import annotations

import torch

from ..analysis.gradients import collect_features, collect_gate_gradients
from ..graph import ChannelGroup
from ..modes import eval_mode
from .base import ScoreContext, register_criterion


def gate_statistics(ctx: ScoreContext):
    """Gate-gradient statistics of every group, computed once per context."""
    if "gate" not in ctx.cache:
        batches = ctx.require_batches("gradient-based")
        with eval_mode(ctx.model):
            ctx.cache["gate"] = collect_gate_gradients(ctx.model, ctx.graph, batches)
    return ctx.cache["gate"]


@register_criterion("taylor", config="TaylorConfig", doc="First-order Taylor score |mean gate gradient| (Molchanov et al., arXiv 1611.06440).")
def taylor(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    """|(1/N) Σ_i G[i, f]| — the absolute mean of the gate-gradient column (Molchanov et al. 2017)."""
    stats = gate_statistics(ctx)[group.index]
    return (stats.col_sum / max(1, stats.n_samples)).abs()


def map_rank(maps: torch.Tensor) -> torch.Tensor:
    """Rank of each H×W map (B × C × H × W → B × C); a vector feature counts as rank 1 when non-zero."""
    if maps.dim() < 4:
        return (maps != 0).to(maps.dtype)
    return torch.linalg.matrix_rank(maps.float()).to(maps.dtype)


@register_criterion("hrank", config="HRankConfig", doc="Remove channels whose feature maps have the lowest mean rank (Lin et al., arXiv 2002.10179).")
def hrank(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    """Mean rank of A_f(x) over the calibration images (Lin et al. 2020), A after ReLU."""
    if "hrank" not in ctx.cache:
        batches = ctx.require_batches("hrank")
        ctx.cache["hrank"] = collect_features(ctx.model, ctx.graph, batches, lambda out: map_rank(out.clamp_min(0)))
    return ctx.cache["hrank"][group.index].mean(0)
