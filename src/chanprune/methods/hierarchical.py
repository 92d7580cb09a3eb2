"""Hierarchical pruning (Zhou et al., arXiv 2206.03596; docs/hierarchical.md).

Stages, in the paper's order:
  analysis    K_l = 𝒢_lᵀ𝒢_l per group, effective filters k_l (§1)
  layer level widths k_l ≤ n'_l ≤ n_l meeting the MAC/params target —
              ``proportional``: n'_l(t) = n_l − round(t·(n_l − k_l)), t bisected (rates ∝ ρ_l^max);
              ``greedy``: remove one filter at a time where the residual energy (pivot diagonal,
              normalised by tr K_l) per MAC saved is least
  filter level keep the first n'_l pivots of pivoted Cholesky on K_l (= column-pivoted QR of 𝒢_l):
              zero columns and (near) linear combinations of kept columns go last; ties by larger L1
  surgery     Torch-Pruning removal, verified against the masked original
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from .. import allocation as alloc
from ..analysis.effective import AnalysisConfig, analyze
from ..config import PruneConfig
from ..cost import COST_NAMES
from ..criteria.magnitude import l1
from ..errors import ConfigError, OverPruneError
from ..graph import lowest, resolve_round_to
from .pipeline import PruneSession, run_pipeline
from .registry import register_method


@dataclass
class HierarchicalConfig(PruneConfig):
    """Layer budgets from effective-filter analysis, then filters by pivoted Cholesky on K_l."""

    method: ClassVar[str] = "hierarchical"
    allocations: ClassVar[tuple[str, ...]] = ("proportional", "greedy")
    allocation: str = "proportional"
    selector: str = "pivoted_cholesky"
    allow_exceed: bool = False
    iterate: int = 1
    calibration: int = 512
    # gate reading at η = 0.99: the best accuracy at equal MACs among the readings (README, "Which reading
    # prunes best?"); the analysis default (feature, η = 0.999) is the better predictor of the knee instead.
    analysis: AnalysisConfig = field(default_factory=lambda: AnalysisConfig(reading="gate", threshold=0.99))

    def __post_init__(self):
        super().__post_init__()
        if self.selector not in ("pivoted_cholesky", "l1"):
            raise ConfigError(f"selector must be 'pivoted_cholesky' or 'l1', not {self.selector!r}.")
        if isinstance(self.analysis, dict):
            self.analysis = AnalysisConfig(**self.analysis)
        # the analysis reads the calibration images the pruning draws: one number, this config's calibration
        default = AnalysisConfig.__dataclass_fields__["calibration"].default
        if self.analysis.calibration not in (default, self.calibration):
            raise ConfigError(f"HierarchicalConfig analyses the calibration images it prunes with; pass "
                              f"calibration={self.analysis.calibration} to HierarchicalConfig, not to its AnalysisConfig.")
        self.analysis = replace(self.analysis, calibration=self.calibration)
        if not isinstance(self.iterate, int) or self.iterate < 1:
            raise ConfigError(f"iterate must be a positive number of steps, not {self.iterate!r}.")
        if self.iterate > 1 and self.target is None:
            raise ConfigError("iterate > 1 needs target_macs or target_params, so each step knows how far to go.")


def pivoted_cholesky(gram: torch.Tensor, tiebreak: torch.Tensor | None = None, rel_tol: float = 1e-10):
    """Pivot order of K = 𝒢ᵀ𝒢 and each pivot's residual diagonal (the energy it adds).

    Greedy column-pivoted QR of 𝒢 done on K: at step j pick the column with the largest residual
    diagonal d_i = K_ii − Σ_{m<j} L_im² (ties within ``rel_tol``·max d → larger ``tiebreak``).
    Columns whose residual is ≈ 0 (zero, copies, combinations of chosen ones) come last, by tiebreak.
    """
    k = gram.double()
    n = k.shape[0]
    tiebreak = torch.zeros(n, dtype=torch.float64) if tiebreak is None else tiebreak.double().cpu()
    d = torch.diagonal(k).clone().cpu()
    scale = float(d.max()) if n else 0.0
    tol = rel_tol * scale if scale > 0 else 0.0
    lower = torch.zeros(n, n, dtype=torch.float64)
    k = k.cpu()
    remaining = torch.ones(n, dtype=torch.bool)
    order, residual = [], []
    for j in range(n):
        cand = torch.where(remaining)[0]
        best = d[cand].max()
        if best <= tol:
            rest = cand[torch.argsort(tiebreak[cand], descending=True, stable=True)]
            order += rest.tolist()
            residual += d[rest].clamp_min(0).tolist()
            break
        near = cand[d[cand] >= best - tol]
        p = int(near[torch.argmax(tiebreak[near])]) if len(near) > 1 else int(near[0])
        order.append(p)
        residual.append(float(d[p]))
        remaining[p] = False
        pivot = d[p].sqrt()
        rest = torch.where(remaining)[0]
        col = (k[rest, p] - lower[rest, :j] @ lower[p, :j]) / pivot
        lower[rest, j] = col
        lower[p, j] = pivot
        d[rest] -= col**2
    return order, torch.tensor(residual, dtype=torch.float64)


def _proportional(channels, floor, round_to, exceed: bool):
    """Widths w_l(s) = n_l − s·(n_l − k_l): every group gives up the same share of its redundancy.

    With ``exceed`` the knob runs on to s = 2: past s = 1 every group sits at its floor k_l, and the
    floors shrink together, w_l = k_l − (s − 1)·(k_l − 1), so any target down to one channel per group
    is reachable without sending the most redundant groups to a single channel first.
    """
    if not exceed:
        return alloc.uniform(channels, round_to=round_to, floor=floor)
    steps = alloc.per_group(round_to, len(channels))

    def widths(t: float) -> list[int]:
        s = 2.0 * t
        if s <= 1.0:
            raw = [n - s * (n - k) for n, k in zip(channels, floor)]
        else:
            raw = [k - (s - 1.0) * (k - 1) for k in floor]
        return [max(1, resolve_round_to(max(1, round(w)), n, step)) for w, n, step in zip(raw, channels, steps)]

    return widths


def _greedy(session, floor, residuals, exceed: bool):
    """Removal sequence sorted by (residual energy / trace K_l) / MACs saved per channel of the group."""
    channels = session.channels
    full = session.cost(channels)[0]
    steps = []
    for gi, (n, k) in enumerate(zip(channels, floor)):
        one_less = channels.copy()
        one_less[gi] -= 1
        saved = max(full - session.cost(one_less)[0], 1e-12)
        trace = float(residuals[gi].sum()) or 1.0
        low = 1 if exceed else k
        # the pivot order is kept front-to-back, so removals go back-to-front
        for pos in range(n - 1, low - 1, -1):
            steps.append((float(residuals[gi][pos]) / trace / saved, gi, pos))
    steps.sort()

    def widths(t: float) -> list[int]:
        keep = channels.copy()
        for _, gi, _pos in steps[: int(round(t * len(steps)))]:
            keep[gi] -= 1
        return [resolve_round_to(k, n, step) for k, n, step in zip(keep, channels, session.steps)]

    return widths


def hierarchical_planner(session: PruneSession) -> dict[int, list[int]]:
    cfg: HierarchicalConfig = session.config
    result = analyze(session.work, session.batches, cfg.analysis, example_inputs=session.example_inputs, graph=session.graph)
    floor = result.effective
    target = cfg.target
    if target is not None:
        kind, value = target
        most = result.max_compression_macs if kind == "macs" else result.max_compression_params
        if 1 - value > most + 1e-9 and not cfg.allow_exceed:
            raise OverPruneError(
                f"the target keeps {value:.1%} of the {COST_NAMES[kind]}, but the analysis says at most {most:.1%} can be removed "
                f"(every layer keeps its effective filters); ask for a target of at least {1 - most:.1%}, "
                "or pass allow_exceed=True to prune beyond the analysis."
            )
    tiebreaks = [l1(g, session.scores) for g in session.graph.groups]
    orders, residuals = [], []
    for g, tb in zip(session.graph.groups, tiebreaks):
        order, residual = pivoted_cholesky(result.grams[g.index], tb)
        orders.append(order)
        residuals.append(residual)
    if cfg.allocation == "greedy":
        widths = _greedy(session, floor, residuals, cfg.allow_exceed)
    else:
        widths = _proportional(session.channels, floor, session.steps, cfg.allow_exceed)
    keep = session.allocate(widths)
    session.notes["analysis"] = {
        "reading": cfg.analysis.reading, "rule": cfg.analysis.rule, "threshold": cfg.analysis.threshold,
        "samples": result.samples, "effective": floor,
        "unresolved": [g.name for g in result.groups if not g.resolved],  # wider than the samples: kept whole
        "max_compression_macs": result.max_compression_macs,
        "max_compression_params": result.max_compression_params, "seconds": result.seconds,
    }
    if cfg.selector == "l1":
        return session.remove_lowest(tiebreaks, keep)
    # a group tied by a grouped conv drops whole classes, the ones whose channels come last in the pivot order
    return {g.index: lowest(-_positions(order), g.channels - k, g.classes) if g.classes else sorted(order[k:])
            for g, order, k in zip(session.graph.groups, orders, keep)}


def _positions(order: list[int]) -> torch.Tensor:
    """Each channel's position in a pivot order."""
    pos = torch.empty(len(order), dtype=torch.float64)
    pos[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order), dtype=torch.float64)
    return pos


@register_method(HierarchicalConfig)
def prune_hierarchical(model, config: HierarchicalConfig, data=None, example_inputs=None):
    """The shared pipeline around :func:`hierarchical_planner`; with ``iterate`` = K > 1, K such steps.

    Step s goes to the kept fraction target^(s/K) (geometric), re-analysing the pruned model before each
    step, and stops early when the analysis finds no redundancy left.
    """
    if config.iterate == 1:
        return run_pipeline(model, config, data, example_inputs, hierarchical_planner)
    kind, value = config.target
    current, reached = model, 1.0
    for step in range(1, config.iterate + 1):
        goal = value ** (step / config.iterate)
        relative = min(1.0, goal / reached)
        step_cfg = replace(config, iterate=1, target_macs=relative if kind == "macs" else None,
                           target_params=relative if kind == "params" else None)
        nxt = run_pipeline(current, step_cfg, data, example_inputs, hierarchical_planner)
        record = nxt.chanprune_history[-1]
        record["step"] = {"index": step, "of": config.iterate, "goal": goal}
        reached *= record[kind]["kept"]
        current = nxt
        if all(g["kept"] == g["channels"] for g in record["groups"]) and record["analysis"]["max_compression_" + kind] <= 1e-9:
            record["step"]["stopped"] = "no redundancy left"
            break
    return current
