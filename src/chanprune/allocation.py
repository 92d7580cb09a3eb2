"""How many channels each group keeps: uniform and global rules, and the MAC/params-target search.

Every rule is a *widths function* ``t ↦ keep`` of one global knob t ∈ [0, 1] whose cost falls as t
grows; :func:`search` bisects t so that the cost lands on the target, then nudges single groups by one
channel to land within the tolerance where rounding left a gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .cost import COST_NAMES, CostModel
from .errors import PruneError
from .graph import resolve_round_to

WidthsFn = Callable[[float], list[int]]
RoundTo = int | Sequence[int] | None  # one multiple for every group, or one per group (PruningGraph.steps)


def per_group(round_to: RoundTo, groups: int) -> list[int | None]:
    """``round_to`` as one entry per group."""
    if round_to is None or isinstance(round_to, int):
        return [round_to] * groups
    return list(round_to)


def uniform(channels: Sequence[int], round_to: RoundTo = None, floor: Sequence[int] | None = None) -> WidthsFn:
    """n'_l(t) = n_l − round(t·(n_l − floor_l)); floor_l = 1 unless given (hierarchical uses k_l), then rounded
    up to a multiple of round_to_l."""
    lows = [1] * len(channels) if floor is None else [max(1, f) for f in floor]
    steps = per_group(round_to, len(channels))

    def widths(t: float) -> list[int]:
        return [
            resolve_round_to(max(low, n - round(t * (n - low))), n, step) for n, low, step in zip(channels, lows, steps)
        ]

    return widths


def global_ranking(scores: Sequence[torch.Tensor], round_to: RoundTo = None, min_keep: int = 1) -> WidthsFn:
    """Remove the globally lowest fraction t of all channels, scores normalised by each group's mean."""
    normed = [s.double() / s.double().abs().mean().clamp_min(1e-12) for s in scores]
    flat = torch.sort(torch.cat(normed)).values
    steps = per_group(round_to, len(scores))

    def widths(t: float) -> list[int]:
        if t <= 0:
            return [len(s) for s in normed]
        cut = flat[min(len(flat) - 1, max(0, int(math.floor(t * len(flat))) - 1))]
        return [
            resolve_round_to(max(min_keep, int((s > cut).sum())), len(s), step) for s, step in zip(normed, steps)
        ]

    return widths


@dataclass
class SearchResult:
    keep: list[int]
    knob: float
    kept: float       # achieved fraction of the dense cost kept (by the cost model)
    target: float     # the fraction of the dense cost asked for
    kind: str

    @property
    def within(self) -> float:
        return abs(self.kept - self.target) / self.target


def search(
    widths: WidthsFn,
    cost: CostModel,
    target: float,
    kind: str = "macs",
    tolerance: float = 0.01,
    iterations: int = 40,
    steps: Sequence[int] | None = None,
) -> SearchResult:
    """Bisect the knob t so that cost(widths(t)) / cost(dense) ≈ target (relative ``tolerance``).

    ``steps``: per group, the multiple a kept count must stay (the final nudge adds that many channels).
    Raises :class:`PruneError` when even t = 1 keeps more than the target allows.
    """
    lo, hi = 0.0, 1.0
    full = cost.kept(widths(hi), kind)
    if full > target * (1 + tolerance):
        raise PruneError(
            f"the target of {target:.1%} of the {COST_NAMES[kind]} cannot be reached: "
            f"the smallest model this allocation allows keeps {full:.1%}; ask for a larger target or allow more pruning."
        )
    if cost.kept(widths(lo), kind) <= target:
        keep = widths(lo)
        return SearchResult(keep, lo, cost.kept(keep, kind), target, kind)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if cost.kept(widths(mid), kind) > target:
            lo = mid
        else:
            hi = mid
    keep = widths(hi)
    keep = nudge(keep, cost, target, kind, tolerance, step=(lambda g, k: k + steps[g]) if steps else None)
    return SearchResult(keep, hi, cost.kept(keep, kind), target, kind)


def nudge(keep, cost, target, kind, tolerance, step=None) -> list[int]:
    """Add back single channels while the cost stays ≤ target·(1+tol), closest to the target first.

    ``step(g, k)``: the width group g moves to from k (default k + 1; latency-aware rounding moves by blocks).

    Rounding can leave the bisection's answer further below the target than the tolerance; moving one
    group at a time by one channel closes that gap. Adding channels never breaks a per-group floor.
    """
    keep = list(keep)
    full = cost.graph.widths()
    kept = cost.kept(keep, kind)
    while abs(kept - target) > tolerance * target:
        best = None
        for g, (k, n) in enumerate(zip(keep, full)):
            wider = k + 1 if step is None else step(g, k)
            if k >= n or not k < wider <= n:
                continue
            keep[g] = wider
            r = cost.kept(keep, kind)
            keep[g] = k
            if r <= target * (1 + tolerance) and (best is None or r > best[0]):
                best = (r, g, wider)
        if best is None:
            break
        kept, g, keep[g] = best
    return keep
