"""Latency-aware rounding (``round_to="auto"``): channel counts this machine runs fast, the MAC target still met.

A MAC count is not a latency. onnxruntime's CPU convolutions (MLAS) run a conv in the blocked NCHWc layout
only when its channel counts are multiples of the vector block (8 floats with AVX2); other convs fall back
to im2col + GEMM, and every switch between the layouts adds a reorder. A pruned model whose widths are all
off the block size can lose its whole MAC reduction: on the shipped ResNet-20, 2× fewer MACs ran at 0.9–1.0×
the dense speed in onnxruntime at batch 32, and at 1.75× with every width a multiple of 8.

The effect is joint (a conv is blocked only when its input *and* output widths are), so single layers timed
alone mislead; the table here is measured on whole models. For each rounding q in ``CANDIDATES`` the
allocation's knob is searched again with every width rounded up to a multiple of q (:func:`allocation.
snapped_search`, so the MAC target is met by the rounded widths, other groups shrinking where one grew);
a model of exactly those widths is built (surgery on a copy, weights irrelevant), exported, and all
candidates are timed interleaved in onnxruntime at the deployment batch size. The fastest wins.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch

from . import allocation as alloc
from .errors import PruneError
from .graph import PruningGraph

__all__ = ["CANDIDATES", "BATCH", "REPEATS", "latency_aware_keep"]

CANDIDATES = (1, 4, 8, 16)   # round every width up to a multiple of q (1: the plain allocation)
BATCH = 32                   # the deployment batch size the table is measured at
REPEATS = 7                  # interleaved rounds (the median is kept)
LOWER_SLACK = 0.05           # blocks are coarse: a rounding may land up to 5 % below the target (never above it)


def _shape_model(session, keep: Sequence[int]) -> torch.nn.Module:
    """A copy of the working model with exactly ``keep`` channels per group (which ones does not matter for timing)."""
    work = copy.deepcopy(session.original).eval()
    graph = PruningGraph(work, session.example_inputs, ignored_layers=session.config.ignored_layers)
    graph.remove({g.index: list(range(k, g.channels)) for g, k in zip(graph.groups, keep) if k < g.channels})
    return work


def fit_blocks(planned: Sequence[int], channels: Sequence[int], q: int, cost, target: tuple[str, float] | None,
               tolerance: float) -> list[int] | None:
    """The planned widths moved to multiples of q (or the full width), the target met again; None if it cannot be.

    Each width goes to its nearest multiple of q; then, while the cost is above target·(1+tol), the group that
    sits furthest above its planned width (relatively) drops one block, and finally single blocks are added
    back while the target allows (:func:`allocation.nudge`). No group moves more than one block away from its
    plan (rounding may not turn into a different allocation); the result lands at most ``tolerance`` above
    and ``LOWER_SLACK`` below the target, or the rounding q is refused.
    """
    def nearest(k: int, n: int) -> int:
        return n if n - k < q / 2 else max(min(q, n), int(round(k / q)) * q)

    keep = [nearest(k, n) for k, n in zip(planned, channels)]
    if target is None or q == 1:
        return keep
    kind, value = target
    low = [max(1, p - q) for p in planned]
    high = [min(n, p + q) for p, n in zip(planned, channels)]

    def down(k: int) -> int:
        return k - (q if k % q == 0 else k % q)

    def up(g: int, k: int) -> int:
        w = min(channels[g], (k // q + 1) * q)
        return w if w <= high[g] else channels[g] + 1  # beyond one block from the plan: not a step nudge may take

    while cost.kept(keep, kind) > value * (1 + tolerance):
        movable = [g for g, k in enumerate(keep) if down(k) >= low[g]]
        if not movable:
            return None
        g = max(movable, key=lambda g: (keep[g] / planned[g], keep[g]))
        keep[g] = down(keep[g])
    keep = alloc.nudge(keep, cost, value, kind, tolerance, step=up)
    return keep if cost.kept(keep, kind) >= value * (1 - LOWER_SLACK) else None


def latency_aware_keep(session, widths: alloc.WidthsFn, *, candidates: Sequence[int] = CANDIDATES,
                       batch: int = BATCH, repeats: int = REPEATS, threads: int = 1) -> tuple[list[int], alloc.SearchResult | None, dict]:
    """Kept channels per group from a latency table measured on this machine: (keep, search result, table record)."""
    from .measurement import latency

    t0 = time.perf_counter()
    target, tol = session.config.target, session.config.tolerance
    channels = session.channels
    options: dict[int, tuple[list[int], alloc.SearchResult | None]] = {}
    refused: dict[int, str] = {}
    if target is None:
        planned = widths(float(session.config.ratio))
    else:
        planned = alloc.search(widths, session.cost, target[1], kind=target[0], tolerance=tol).keep
    for q in candidates:
        keep = fit_blocks(planned, channels, q, session.cost, target, tol)
        if keep is None:
            refused[q] = f"no widths in blocks of {q} within one block of the plan meet the target"
            continue
        kept = session.cost.kept(keep, target[0]) if target else None
        options[q] = (keep, alloc.SearchResult(keep, float("nan"), kept, target[1], target[0]) if target else None)
    if not options:
        raise PruneError(f"no rounding in {tuple(candidates)} reaches the target; ask for a larger target or round_to=None.")
    distinct: dict[tuple[int, ...], int] = {}
    for q, (keep, _) in options.items():
        distinct.setdefault(tuple(keep), q)
    models = {f"q{q}": _shape_model(session, keep) for keep, q in distinct.items()}
    shape = tuple(session.example_inputs.shape[1:])
    lat = latency(models, shape, batch_sizes=(batch,), repeats=repeats, warmup=1, threads=threads, backend="onnxruntime")
    ms = {q: lat[f"q{distinct[tuple(keep)]}"][batch]["median_ms"] for q, (keep, _) in options.items()}
    best = min(ms, key=lambda q: (ms[q], q))
    keep, res = options[best]
    record = {"backend": "onnxruntime", "batch": batch, "threads": threads, "repeats": repeats, "chosen": best,
              "table": {str(q): {"ms": ms[q], "keep": list(options[q][0]),
                                 "macs_kept": session.cost.kept(options[q][0], "macs")} for q in options},
              "refused": refused, "seconds": time.perf_counter() - t0}
    return list(keep), res, record
