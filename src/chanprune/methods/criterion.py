"""Criterion pruning: score every channel with one criterion, allocate uniformly or globally, remove the lowest.

Serves :class:`~chanprune.criteria.CriterionConfig` and every config a criterion's registration creates
(``L1Config``, ``TaylorConfig``, ...): the criterion is the config's ``criterion`` field.
"""
from __future__ import annotations

from .. import allocation as alloc
from ..criteria import CriterionConfig, get_criterion
from .pipeline import PruneSession, register_planner


@register_planner(CriterionConfig)
def criterion_planner(session: PruneSession) -> dict[int, list[int]]:
    """Score every group with the config's criterion; uniform or global allocation; remove the lowest."""
    score = get_criterion(session.config.criterion)
    scores = [score(g, session.scores) for g in session.graph.groups]
    if session.config.allocation == "global":
        widths = alloc.global_ranking(scores, round_to=session.steps)
    else:
        widths = alloc.uniform(session.channels, round_to=session.steps)
    return session.remove_lowest(scores, session.allocate(widths))
