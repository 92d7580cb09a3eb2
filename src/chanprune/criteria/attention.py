"""Attention criteria: channel importance learned by excitation blocks."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..graph import ChannelGroup
from ..ucp.mseb import SCORES_ATTR, mseb_modules
from .base import ScoreContext, register_criterion


def has_mseb_score(group: ChannelGroup, model) -> bool:
    """Whether one of the group's producers carries an MSEB score (UCP leaves the other groups whole)."""
    stored = getattr(model, SCORES_ATTR, None) or {}
    return any(member.name in stored for member in group.producers)


@register_criterion("mseb")
def mseb(group: ChannelGroup, ctx: ScoreContext) -> torch.Tensor:
    """Σ over the group's producers of their mean excitation I_j (UCP): live MSEBs, or the scores strip_mseb left."""
    stored = getattr(ctx.model, SCORES_ATTR, None)
    if stored is None:
        stored = {name: block.mseb for name, block in mseb_modules(ctx.model)}
        if stored:
            raise ConfigError("the model carries MSEBs but no scores; compute them with mseb_scores() and "
                              "strip_mseb(model, scores), or use UCPConfig.")
    total, found = torch.zeros(group.channels, dtype=torch.float64), False
    for member in group.producers:
        if stored and member.name in stored:
            values = stored[member.name].double().cpu()[torch.as_tensor(member.idxs)]
            total += group.reduce(member, values, "sum")
            found = True
    if not found:
        raise ConfigError(f"group {group.name!r} has no MSEB score; the mseb criterion needs a model scored by UCP "
                          "(UCPConfig, or chanprune.ucp.insert_mseb + training + mseb_scores + strip_mseb).")
    return total


