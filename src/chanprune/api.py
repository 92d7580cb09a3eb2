"""``prune(model, config, data=...)``: the one verb; every method is a planner inside the same session.

A planner receives a :class:`PruneSession` (a working copy of the model, its channel groups, the cost
model and the calibration batches) and returns which root indices each group loses. The session then
does what every method shares: surgery on the copy, verification against the masked original,
recovery, and the record (MACs, params, ratios, timings) attached to the pruned model.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn as nn

from . import allocation as alloc
from .config import PruneConfig
from .cost import CostModel, count
from .criteria import ScoreContext
from .errors import ConfigError, PruneError, VerificationError
from .graph import PruningGraph, lowest
from . import surgery
from .surgery import apply_plan

Planner = Callable[["PruneSession"], dict[int, list[int]]]
METHODS: dict[str, tuple[type, Planner]] = {}


def register_method(config_cls: type, planner: Planner) -> None:
    METHODS[config_cls.method] = (config_cls, planner)


def _as_batches(data, n: int, batch_size: int, seed: int):
    """Calibration batches from a DataBundle, an (x, y) pair, or a list of (x, y) batches."""
    if data is None:
        return None
    if hasattr(data, "calibration"):
        x, y = data.calibration(n, seed=seed)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data[0][:n], data[1][:n]
    elif isinstance(data, (list, tuple)):
        return list(data)
    else:
        raise ConfigError("data must be a chanprune DataBundle (chanprune.load_data), an (images, labels) pair, or a list of such batches.")
    if len(x) == 0:
        raise ConfigError("the calibration set is empty; pass at least one image (calibration=N with N >= 1).")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


class PruneSession:
    """State shared by a planner and the common steps around it."""

    def __init__(self, model: nn.Module, config: PruneConfig, data=None, example_inputs: torch.Tensor | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"prune() needs a torch.nn.Module, got {type(model).__name__}.")
        self.original = model
        self.config = config
        self.data = data
        if example_inputs is None:
            if data is not None and hasattr(data, "example_input"):
                example_inputs = data.example_input(1)
            else:
                raise ConfigError("pass data=... (a DataBundle) or example_inputs=... so the model can be traced.")
        self.example_inputs = example_inputs
        self.batches = _as_batches(data, config.calibration, config.batch_size, config.seed)
        self.work = copy.deepcopy(model).eval()
        self.graph = PruningGraph(self.work, example_inputs, ignored_layers=config.ignored_layers)
        self.cost = CostModel(self.graph)
        self.scores = ScoreContext(self.work, self.graph, self.batches, seed=config.seed)
        self.search_result: alloc.SearchResult | None = None
        self.notes: dict = {}
        # fn(pruned) run right after the surgery (and its verification), e.g. CP's and CaP's consumer refits
        self.post_surgery: list[Callable[[nn.Module], None]] = []

    @property
    def channels(self) -> list[int]:
        return self.graph.widths()

    def allocate(self, widths: alloc.WidthsFn) -> list[int]:
        """Kept channels per group: widths(ratio) for a plain ratio, else the knob searched for the target."""
        target = self.config.target
        if target is None:
            return widths(float(self.config.ratio))
        kind, value = target
        self.search_result = alloc.search(widths, self.cost, value, kind=kind, tolerance=self.config.tolerance)
        return self.search_result.keep

    def remove_lowest(self, scores: list[torch.Tensor], keep: list[int]) -> dict[int, list[int]]:
        return {g.index: lowest(s, g.channels - k) for g, s, k in zip(self.graph.groups, scores, keep)}

    def probe(self) -> torch.Tensor | None:
        return self.batches[0][0][: surgery.PROBE_SIZE] if self.batches else None


def criterion_planner(session: PruneSession) -> dict[int, list[int]]:
    """Score every group with the config's criterion; uniform or global allocation; remove the lowest."""
    from .criteria import get_criterion

    score = get_criterion(session.config.criterion)
    scores = [score(g, session.scores) for g in session.graph.groups]
    if session.config.allocation == "global":
        widths = alloc.global_ranking(scores, round_to=session.config.round_to)
    else:
        widths = alloc.uniform(session.channels, round_to=session.config.round_to)
    return session.remove_lowest(scores, session.allocate(widths))


def prune(model: nn.Module, config: PruneConfig, data=None, *, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Return a pruned copy of ``model`` (the argument is left untouched).

    ``config`` picks the method (``L1Config(target_macs=0.5)``, ``HierarchicalConfig(...)``, ...);
    ``data`` is a DataBundle (calibration images are drawn from its training split) or (images, labels).
    The record of what was done is in ``pruned.chanprune_history[-1]``.
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a chanprune config such as L1Config(target_macs=0.5), not {type(config).__name__}.")
    if config.method not in METHODS:
        raise ConfigError(f"no method is registered for {type(config).__name__}; known methods: {', '.join(sorted(METHODS))}.")
    planner = METHODS[config.method][1]
    if config.recover in ("bn", "compensate+bn") and not hasattr(data, "loader"):
        raise ConfigError(f"recover={config.recover!r} re-estimates BatchNorm statistics from training images; "
                          "pass data=a DataBundle (chanprune.load_data), or use recover='compensate'.")
    if getattr(config, "iterate", 1) > 1:
        from .methods.hierarchical import prune_iteratively

        return prune_iteratively(model, config, data, example_inputs)
    t0 = time.perf_counter()
    session = PruneSession(model, config, data, example_inputs)
    macs0, params0 = session.cost.macs, session.cost.params
    plan = planner(session)
    t_plan = time.perf_counter() - t0
    pruned, report = apply_plan(session.graph, plan, model, verify=config.verify, probe=session.probe(),
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
    if config.recover in ("compensate", "compensate+bn"):
        from .recovery import apply_compensation

        session.notes["compensation"] = apply_compensation(model, pruned, session.graph, report.removed, session.batches)
    if config.recover in ("bn", "compensate+bn"):
        from .engine import recalibrate_bn

        recalibrate_bn(pruned, data, num_batches=config.recover_batches, batch_size=config.batch_size)
    pruned.eval()
    macs1, params1 = count(pruned, session.example_inputs)
    record = {
        "method": config.method,
        "config": config.to_dict(),
        "groups": [
            {"name": g.name, "channels": g.channels, "kept": g.channels - len(plan.get(g.index, []))}
            for g in session.graph.groups
        ],
        "macs": {"before": macs0, "after": macs1, "ratio": macs1 / macs0},
        "params": {"before": params0, "after": params1, "ratio": params1 / params0},
        "target": list(config.target) if config.target else None,
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
        achieved = record[kind]["ratio"]
        if abs(achieved - value) > config.tolerance * value and session.search_result is not None:
            record["warning"] = (
                f"landed at {achieved:.2%} of the {kind}, not within {config.tolerance:.0%} of {value:.0%}: "
                "channel counts are too coarse for this model; try round_to=None or a nearby target."
            )
    history = list(getattr(model, "chanprune_history", []))
    history.append(record)
    pruned.chanprune_history = history
    return pruned


def _register_criterion_methods() -> None:
    from . import config as cfg

    for cls in (cfg.L1Config, cfg.L2Config, cfg.BNScaleConfig, cfg.TaylorConfig, cfg.FPGMConfig, cfg.HRankConfig, cfg.RandomConfig):
        register_method(cls, criterion_planner)


_register_criterion_methods()


from . import methods  # noqa: E402,F401  (registers the methods that live in chanprune.methods)
