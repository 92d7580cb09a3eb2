"""Weight-only criteria: L1, L2, BN scale, FPGM, random."""
from __future__ import annotations

import torch

from ..graph import ChannelGroup
from .base import ScoreContext, register_criterion


def filter_rows(group: ChannelGroup) -> list[tuple[torch.Tensor, object]]:
    """Each producer's filters as rows (member idxs order) with the member, for reduction onto root indices."""
    rows = []
    for member in group.producers:
        weight = member.module.weight.detach()
        idxs = torch.as_tensor(member.idxs, device=weight.device)
        rows.append((weight.index_select(0, idxs).flatten(1).double(), member))
    return rows


def _norm_score(group: ChannelGroup, p: int) -> torch.Tensor:
    parts = [group.reduce(m, rows.norm(p=p, dim=1), "mean") for rows, m in filter_rows(group)]
    return torch.stack(parts).mean(0)


@register_criterion("l1", config="L1Config", doc="Remove the filters of smallest L1 norm (Li et al., arXiv 1608.08710).")
def l1(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    return _norm_score(group, 1)


@register_criterion("l2", config="L2Config", doc="Remove the filters of smallest L2 norm.")
def l2(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    return _norm_score(group, 2)


@register_criterion("bn_scale", config="BNScaleConfig", doc="Remove the channels of smallest |BN γ| (Liu et al., arXiv 1708.06519).")
def bn_scale(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    parts = []
    for member in group.norms:
        gamma = getattr(member.module, "weight", None)
        if gamma is None:
            continue
        idxs = torch.as_tensor(member.idxs, device=gamma.device)
        parts.append(group.reduce(member, gamma.detach().index_select(0, idxs).abs().double(), "mean"))
    return torch.stack(parts).mean(0) if parts else l1(group, ctx)


@register_criterion("fpgm", config="FPGMConfig", doc="Remove filters nearest the geometric median (He et al., arXiv 1811.00250).")
def fpgm(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    """Σ_f' ‖W_f − W_f'‖₂ over the group's concatenated producer filters (root-index order)."""
    cols = []
    for rows, member in filter_rows(group):
        if len(member.root_idxs) != group.channels:
            continue  # a producer sees each channel once; anything else is not a filter bank
        full = torch.zeros(group.channels, rows.shape[1], dtype=rows.dtype, device=rows.device)
        full.index_copy_(0, torch.as_tensor(member.root_idxs, device=rows.device), rows)
        cols.append(full)
    filters = torch.cat(cols, 1)
    return torch.cdist(filters, filters).sum(1)


@register_criterion("random", config="RandomConfig", doc="Remove a seeded random subset (a control).")
def random(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    gen = torch.Generator().manual_seed(ctx.seed * 100_003 + group.index)
    return torch.rand(group.channels, generator=gen, dtype=torch.float64)
