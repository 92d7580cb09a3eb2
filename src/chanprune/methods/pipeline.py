"""The pipeline most methods share: plan → surgery → verify → recover → record.

A *planner* receives a :class:`PruneSession` (a working copy of the model, its channel groups, the cost
model and the calibration batches) and returns which root indices each group loses. :func:`run_pipeline`
does what every such method shares around it: surgery on a copy, verification against the masked
original, the method's own post-surgery steps (CP's and CaP's consumer refits), the configured recovery,
and the record (MACs and params before/after and the fraction kept, timings) attached to the pruned model.
:func:`register_planner` registers a planner as the handler of a config type.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn as nn

from .. import allocation as alloc
from .. import distributed
from .. import surgery
from ..calibration import calibration_batches, trace_inputs
from ..config import PruneConfig
from ..cost import COST_NAMES, CostModel, count_macs_params
from ..criteria import ScoreContext
from ..errors import ConfigError, PruneError, VerificationError
from ..graph import PruningGraph, lowest, spare_layers
from ..recovery import RecoveryContext, get_recovery
from .registry import Handler, register_method

Planner = Callable[["PruneSession"], dict[int, list[int]]]


class PruneSession:
    """State shared by a planner and the common steps around it."""

    def __init__(self, model: nn.Module, config: PruneConfig, data=None, example_inputs: torch.Tensor | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"prune() needs a torch.nn.Module, got {type(model).__name__}.")
        self.original = model
        self.config = config
        self.data = data
        self.example_inputs = trace_inputs(data, example_inputs)
        self.batches, self.calibration = calibration_batches(data, config.calibration, config.batch_size, config.seed)
        self.work = copy.deepcopy(model).eval()
        self.graph = PruningGraph(self.work, self.example_inputs, ignored_layers=config.ignored_layers)
        self.example_inputs = self.graph.example_inputs  # on the model's device
        self.cost = CostModel(self.graph)
        self.scores = ScoreContext(self.work, self.graph, self.batches, seed=config.seed)
        self.search_result: alloc.SearchResult | None = None
        self.notes: dict = {}
        # groups the method leaves whole, with the reason, and the option that would prune more (named when a
        # target is out of reach)
        self.unpruned: dict[str, str] = {}
        self.remedy = "ask for a larger target or allow more pruning"
        # fn(pruned) run right after the surgery (and its verification), e.g. CP's and CaP's consumer refits
        self.post_surgery: list[Callable[[nn.Module], None]] = []

    @property
    def channels(self) -> list[int]:
        return self.graph.widths()

    @property
    def steps(self) -> list[int]:
        """Per group, the multiple its kept count must be: ``round_to`` and the grouped convs' tied classes."""
        return self.graph.steps(self.config.round_to)

    def allocate(self, widths: alloc.WidthsFn) -> list[int]:
        """Kept channels per group: widths(ratio) for a plain ratio, else the knob searched for the target."""
        target = self.config.target
        if self.config.round_to == "auto":
            return self._allocate_latency_aware(widths)
        if target is None:
            return widths(float(self.config.ratio))
        kind, value = target
        try:
            self.search_result = alloc.search(widths, self.cost, value, kind=kind, tolerance=self.config.tolerance,
                                              steps=self.steps)
        except PruneError:
            if not self.unpruned:
                raise
            smallest = self.cost.kept(widths(1.0), kind)
            raise PruneError(
                f"the target of {value:.1%} of the {COST_NAMES[kind]} cannot be reached: {self.config.method} leaves "
                f"{len(self.unpruned)} group(s) whole ({listing(self.unpruned)}), so its smallest model keeps {smallest:.1%}; "
                f"ask for at least {smallest:.1%}, or {self.remedy}."
            ) from None
        return self.search_result.keep

    def _allocate_latency_aware(self, widths: alloc.WidthsFn) -> list[int]:
        """round_to="auto": the rounding whose widths measured fastest on this machine (chanprune.rounding)."""
        from ..rounding import latency_aware_keep

        keep, self.search_result, self.notes["latency_rounding"] = latency_aware_keep(self, widths)
        return keep

    def remove_lowest(self, scores: list[torch.Tensor], keep: list[int]) -> dict[int, list[int]]:
        return {g.index: lowest(s, g.channels - k, g.classes) for g, s, k in zip(self.graph.groups, scores, keep)}

    def probe(self) -> torch.Tensor | None:
        return self.batches[0][0][: surgery.PROBE_RESERVE] if self.batches else None


def listing(reasons: dict[str, str], most: int = 3) -> str:
    """'a': why, 'b': why, and N more."""
    items = [f"{name!r}: {why}" for name, why in list(reasons.items())[:most]]
    more = len(reasons) - most
    return ", ".join(items) + (f", and {more} more" if more > 0 else "")


def run_pipeline(model: nn.Module, config: PruneConfig, data, example_inputs: torch.Tensor | None,
                 planner: Planner) -> nn.Module:
    """Plan with ``planner``, remove the planned channels (verified), recover, record; returns the pruned copy."""
    t0 = time.perf_counter()
    session = PruneSession(model, config, data, example_inputs)
    macs0, params0 = session.cost.macs, session.cost.params
    # Under torchrun every rank planned from the same all-reduced statistics; rank 0's plan is the decision.
    plan = distributed.broadcast_object(planner(session))
    if not session.post_surgery:  # refits (CP, CaP) were computed for their plan as it is
        plan = {gi: spare_layers(session.graph.groups[gi], idxs) for gi, idxs in plan.items()}
    t_plan = time.perf_counter() - t0
    pruned, report = surgery.apply_plan(session.graph, plan, model, verify=config.verify, probe=session.probe(),
                                        on_mismatch=config.on_mismatch)
    if report.excluded:
        if session.post_surgery:
            names = [e["name"] for e in report.excluded]
            raise VerificationError(
                f"the surgery had to exclude group(s) {', '.join(map(repr, names))}, but {config.method} computed its refits "
                f"for the full plan; run it again with ignored_layers={names!r}.")
        plan = report.removed
    # The verification above compares the surgery with the masked original; the refits below change
    # weights on purpose, after it.
    for step in session.post_surgery:
        step(pruned)
    session.notes.update(get_recovery(config.recover).apply(
        RecoveryContext(model, pruned, session.graph, report.removed, session.batches, data, config)))
    distributed.broadcast_module_(pruned)  # every rank holds rank 0's pruned weights, bit for bit
    pruned.eval()
    macs1, params1 = count_macs_params(pruned, session.example_inputs)
    record = {
        "method": config.method,
        "config": config.to_dict(),
        "groups": [
            {"name": g.name, "channels": g.channels, "kept": g.channels - len(plan.get(g.index, [])),
             "removed": sorted(int(i) for i in plan.get(g.index, []))}
            for g in session.graph.groups
        ],
        "macs": {"before": macs0, "after": macs1, "kept": macs1 / macs0},
        "params": {"before": params0, "after": params1, "kept": params1 / params0},
        "target": list(config.target) if config.target else None,
        "data": getattr(data, "name", None),
        "input_shape": list(session.example_inputs.shape[1:]),
        "calibration": session.calibration,
        "verified": report.verified,
        "verify_max_rel_error": report.max_rel_error,
        "excluded_groups": report.excluded,
        "seconds": {"plan": t_plan, "remove": report.remove_seconds, "verify": report.verify_seconds,
                    "total": time.perf_counter() - t0},
        **session.notes,
    }
    target = config.target
    if target is not None:
        kind, value = target
        achieved = record[kind]["kept"]
        if abs(achieved - value) > config.tolerance * value and session.search_result is not None:
            if report.excluded:
                names = [e["name"] for e in report.excluded]
                record["warning"] = (
                    f"landed at {achieved:.2%} of the {COST_NAMES[kind]}, not within {config.tolerance:.0%} of {value:.0%}: "
                    f"the verified surgery excluded group(s) {', '.join(map(repr, names))}, which keep all their channels; "
                    f"prune again with ignored_layers={names!r} so the other groups make up the target."
                )
            else:
                record["warning"] = (
                    f"landed at {achieved:.2%} of the {COST_NAMES[kind]}, not within {config.tolerance:.0%} of {value:.0%}: "
                    "channel counts are too coarse for this model; try "
                    + ("round_to=None or " if config.round_to is not None else "") + "a nearby target."
                )
    history = list(getattr(model, "chanprune_history", []))
    history.append(record)
    pruned.chanprune_history = history
    return pruned


def planner_handler(planner: Planner) -> Handler:
    """The handler that runs :func:`run_pipeline` around ``planner``."""

    def handler(model, config, data=None, example_inputs=None):
        return run_pipeline(model, config, data, example_inputs, planner)

    handler.planner = planner
    return handler


def register_planner(config_cls: type) -> Callable[[Planner], Planner]:
    """Decorator: ``@register_planner(MyConfig)`` prunes ``MyConfig`` by the shared pipeline around the planner."""

    def deco(planner: Planner) -> Planner:
        register_method(config_cls)(planner_handler(planner))
        return planner

    return deco
