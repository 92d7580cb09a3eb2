"""CaP: compensation, compensation-aware ranking, binary structural search (Xie et al., arXiv 2108.13728; docs/cap.md).

Stages, in the paper's order:
  statistics   one float64 pass: μ, Σ of every candidate consumer's im2col input (``sampling_stride``)
  ranking      per group, greedy forward selection of channels by the loss drop *after* compensation,
               Δ_t = ‖W(Σ̃_{C,t} − Σ̃_{C,S}QΣ̃_{S,t})L_t⁻ᵀ‖_F², T_t = Σ̃_tt − Σ̃_tSQΣ̃_St = L_tL_tᵀ, with
               Q = Σ̃_SS⁻¹ grown by block inversion (never re-inverted); a group read by several
               consumers sums Δ over them. The nested order gives each group's curve
               e_l(k) = (tr WΣ̃Wᵀ − Σ_{j≤k}Δ_j) / tr WΣ̃Wᵀ
  search       sparsities on a δ-grid; for a global θ each group takes the largest grid sparsity with
               e_l ≤ θ; θ is bisected for the MAC/params target (the shared ``session.allocate``, whose
               final nudge may add single channels to land within the tolerance). With ``rounds`` > 1
               the search is iterative: each round targets an intermediate cost, every group's sparsity
               moves by at most δ, and statistics and rankings are re-estimated on the masked,
               compensated model before the next round (the step constraint)
  surgery      Torch-Pruning removal, verified against the masked original
  compensation after the surgery, every consumer of a pruned group gets W′ = WΣ̃_{C,S}Σ̃_SS⁻¹ and b′ from
               the original model's statistics (:func:`chanprune.recovery.apply_compensation`)

Consumers that read other channels too (DenseNet's concatenations) keep those columns fixed in S while a
group is ranked. Linear consumers and 1×1 convs are the same code with k² = 1. Groups read by a grouped
conv are left unpruned; residual/tied groups only with ``residual=True``. ``ridge`` (λ = ridge·tr(Σ̃)/D on
T_t and Σ̃_SS, in the ranking and the compensation alike) defaults to 1e-3, not a numerical epsilon:
with calibration sets of ~100 images it keeps the refits from amplifying errors on other images.
``ratio=r`` (instead of a target) bisects θ so that a fraction r of all channels goes;
``allocation="uniform"`` keeps CaP's ranking and compensation but uses the uniform widths rule.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch

from .. import allocation as alloc
from ..config import PruneConfig
from ..errors import ConfigError
from ..graph import resolve_round_to
from ..recovery.compensation import clean_cov, apply_compensation, compensate_model, refit_skip_reason, ridge_scale
from ..recovery.stats import Moments, columns, consumer_moments, weight_matrix
from ..surgery import mask_hooks, mask_sites
from .pipeline import PruneSession, listing, register_planner


@dataclass
class CaPConfig(PruneConfig):
    """Compensation-aware ranking, binary structural search over a δ-grid, closed-form compensation."""

    method: ClassVar[str] = "cap"
    refits_consumers: ClassVar[bool] = True
    allocations: ClassVar[tuple[str, ...]] = ("binary", "uniform")
    allocation: str = "binary"
    delta: float = 0.05
    rounds: int = 1
    sampling_stride: int = 1
    ridge: float = 1e-3
    rescale: bool = False
    residual: bool = False
    calibration: int = 128

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta <= 0.5):
            raise ConfigError(f"delta must lie in (0, 0.5], not {self.delta!r}; e.g. delta=0.05.")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a positive integer, not {self.rounds!r}.")
        if not isinstance(self.sampling_stride, int) or self.sampling_stride < 1:
            raise ConfigError(f"sampling_stride must be a positive integer, not {self.sampling_stride!r}.")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise ConfigError(f"ridge must be a number >= 0, not {self.ridge!r}.")


# --------------------------------------------------------------------------- greedy ranking


@dataclass
class Problem:
    """One consumer's view of one group: weight W (n × D), input covariance Σ̃, the columns of each of the
    group's channels (``blocks[r]``), and the columns that stay in S throughout (``fixed``)."""

    W: torch.Tensor
    cov: torch.Tensor
    blocks: list[torch.Tensor]
    fixed: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


@dataclass
class Ranking:
    order: list[int]              # channels, most useful first
    deltas: list[float]           # loss drop of each pick (same order)
    total: float                  # Σ tr(WΣ̃Wᵀ) over the problems
    base: float                   # loss with none of the group's channels kept (only ``fixed``)
    q: list[torch.Tensor] | None = None       # final Q per problem (with track_q)
    q_cols: list[torch.Tensor] | None = None  # the columns Q is indexed by

    def loss(self, keep: int) -> float:
        """L(S_keep): the compensated loss keeping the first ``keep`` channels of the order."""
        return self.base - float(sum(self.deltas[:keep]))

    def curve(self) -> torch.Tensor:
        """e(k) for k = 0..c (normalised by the total energy tr WΣ̃Wᵀ)."""
        steps = torch.tensor([0.0] + list(self.deltas), dtype=torch.float64).cumsum(0)
        losses = (self.base - steps).clamp_min(0.0)
        return losses / self.total if self.total > 0 else torch.zeros_like(losses)


def block_inverse_update(Q: torch.Tensor, cov_st: torch.Tensor, T_inv: torch.Tensor) -> torch.Tensor:
    """Q for S ∪ {t} from Q = (Σ̃_SS)⁻¹, Σ̃_St and T⁻¹ = (Σ̃_tt − Σ̃_tSQΣ̃_St)⁻¹ (block inversion)."""
    qs = Q @ cov_st                          # QΣ̃_St
    top_right = -qs @ T_inv
    top_left = Q + qs @ T_inv @ qs.T
    return torch.cat([torch.cat([top_left, top_right], 1), torch.cat([top_right.T, T_inv], 1)], 0)


class _State:
    """Per-problem greedy state, restricted to the coordinates of the channels not chosen yet.

    R = Σ̃ − Σ̃_{:,S}QΣ̃_{S,:} holds every candidate's Schur complement (T_t = R_tt + λI) and A = WR its
    loss gradient, so Δ_t = ‖A_{:,t}L_t⁻ᵀ‖² costs O(nk²) per candidate. Adding block t is the same
    rank-k² update as the block inversion of Q: R ← R − R_{:,t}T⁻¹R_{t,:}, A ← A − A_{:,t}T⁻¹R_{t,:}
    (exact on the remaining coordinates, which is all later rounds read). Rows and columns of chosen
    channels are dropped every so often, so the work shrinks as S grows.
    """

    def __init__(self, problem: Problem, ridge: float, track_q: bool):
        W = problem.W.double()
        cov = problem.cov
        self.W, self.cov, self.blocks = W, cov, problem.blocks
        self.lam = ridge * ridge_scale(cov) if ridge > 0 else 0.0
        self.total = float(torch.einsum("nd,de,ne->", W, cov, W))
        fixed = problem.fixed
        self.track_q = track_q
        self.q_cols = fixed.clone()
        if fixed.numel():
            cff = cov[fixed][:, fixed] + self.lam * torch.eye(len(fixed), dtype=torch.float64)
            factor = torch.linalg.cholesky(cff)
            cf = cov[:, fixed]
            R = cov - cf @ torch.cholesky_solve(cf.T, factor)
            self.Q = torch.cholesky_inverse(factor) if track_q else None
        else:
            R = cov
            self.Q = torch.zeros(0, 0, dtype=torch.float64) if track_q else None
        A = W @ R
        self.base = float((A * W).sum())  # L(fixed)
        coords = torch.cat([b for b in self.blocks if len(b)]) if any(len(b) for b in self.blocks) else torch.zeros(0, dtype=torch.long)
        self.R = R[coords][:, coords].clone()
        self.A = A[:, coords].clone()
        local = torch.full((cov.shape[0],), -1, dtype=torch.long)
        local[coords] = torch.arange(len(coords))
        self.pos = [local[b] for b in self.blocks]
        self.alive = [len(b) > 0 for b in self.blocks]
        self.dead = 0
        self._index()

    def _index(self) -> None:
        sizes: dict[int, list[int]] = {}
        for r, blk in enumerate(self.pos):
            if self.alive[r]:
                sizes.setdefault(len(blk), []).append(r)
        self.by_size = {k2: (torch.tensor(rs), torch.stack([self.pos[r] for r in rs])) for k2, rs in sizes.items()}

    def _compact(self) -> None:
        keep = torch.cat([self.pos[r] for r in range(len(self.pos)) if self.alive[r]]) if any(self.alive) else torch.zeros(0, dtype=torch.long)
        keep = torch.sort(keep).values
        remap = torch.full((self.R.shape[0],), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        self.R = self.R[keep][:, keep].contiguous()
        self.A = self.A[:, keep].contiguous()
        self.pos = [remap[p] if self.alive[r] else p for r, p in enumerate(self.pos)]
        self.dead = 0
        self._index()

    def deltas(self, channels: int) -> torch.Tensor:
        out = torch.zeros(channels, dtype=torch.float64)
        for k2, (rs, idx) in self.by_size.items():
            if k2 == 1:
                cols = idx[:, 0]
                t = self.R[cols, cols] + self.lam
                a2 = (self.A[:, cols] ** 2).sum(0)
                out[rs] = torch.where(t > 0, a2 / t.clamp_min(1e-300), torch.zeros_like(a2))
                continue
            T = self.R[idx[:, :, None], idx[:, None, :]] + self.lam * torch.eye(k2, dtype=torch.float64)
            factor, info = torch.linalg.cholesky_ex(T)
            At = self.A[:, idx].permute(1, 2, 0)  # c × k² × n
            sol = torch.linalg.solve_triangular(factor, At, upper=False)
            d = (sol**2).sum((1, 2))
            out[rs] = torch.where(info == 0, d, torch.zeros_like(d))
        return out

    def add(self, r: int) -> bool:
        if not self.alive[r]:
            return True
        cols = self.pos[r]
        T = self.R[cols][:, cols] + self.lam * torch.eye(len(cols), dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(T)
        if int(info) != 0:
            return False
        T_inv = torch.cholesky_inverse(factor)
        Rc = self.R[:, cols]
        self.A.addmm_(self.A[:, cols] @ T_inv, Rc.T, alpha=-1.0)
        self.R.addmm_(Rc @ T_inv, Rc.T, alpha=-1.0)
        if self.track_q:
            gcols = self.blocks[r]
            self.Q = block_inverse_update(self.Q, self.cov[self.q_cols][:, gcols], T_inv)
            self.q_cols = torch.cat([self.q_cols, gcols])
        self.alive[r] = False
        self.dead += len(cols)
        if self.dead * 4 > self.R.shape[0]:  # chosen channels' coordinates stay (unused) until then
            self._compact()
        return True


def greedy_rank(
    problems: Sequence[Problem],
    channels: int,
    ridge: float = 1e-8,
    exclude: Sequence[int] = (),
    track_q: bool = False,
    stop_tol: float = 1e-12,
) -> Ranking:
    """Compensation-aware forward selection over a group's ``channels`` (docs/cap.md, step 2).

    Each round adds the channel of largest Δ_t summed over the problems. Once no candidate lowers the
    loss by more than ``stop_tol``·total (exact duplicates, dead channels, more channels than calibration
    samples), the rest follow by their uncompensated energy tr(W_tΣ_ttW_tᵀ) with Δ = 0. ``exclude``d
    channels (already removed) come last. ``ridge`` is added to T_t and Σ̃_FF relative to mean(diag Σ̃).
    """
    states = [_State(p, ridge, track_q) for p in problems]
    total = sum(s.total for s in states)
    base = sum(s.base for s in states)
    excluded = {int(e) for e in exclude}
    remaining = [r for r in range(channels) if r not in excluded]
    order, deltas = [], []
    alive = torch.zeros(channels, dtype=torch.bool)
    alive[remaining] = True
    while alive.any():
        d = sum(s.deltas(channels) for s in states)
        d = torch.where(alive, d, torch.full_like(d, -math.inf))
        best = int(torch.argmax(d))
        if float(d[best]) <= stop_tol * max(total, 1e-300):
            break
        if not all(s.add(best) for s in states):
            break
        order.append(best)
        deltas.append(max(float(d[best]), 0.0))
        alive[best] = False
    rest = [r for r in range(channels) if alive[r]]
    if rest:
        energy = torch.zeros(channels, dtype=torch.float64)
        for s in states:
            for r in rest:
                cols = s.blocks[r]
                if len(cols):
                    w = s.W[:, cols]
                    energy[r] += float(torch.einsum("nd,de,ne->", w, s.cov[cols][:, cols], w))
        rest.sort(key=lambda r: (-float(energy[r]), r))
        order += rest
        deltas += [0.0] * len(rest)
    tail = sorted(excluded)
    order += tail
    deltas += [0.0] * len(tail)
    ranking = Ranking(order, deltas, total, base)
    if track_q:
        ranking.q = [s.Q for s in states]
        ranking.q_cols = [s.q_cols for s in states]
    return ranking


# --------------------------------------------------------------------------- planner


def candidates(session: PruneSession, residual: bool) -> list:
    """Groups CaP may prune: every consumer has an im2col view; residual groups only if asked."""
    out = []
    for g in session.graph.groups:
        why = refit_skip_reason(g, residual)
        if why is None:
            out.append(g)
        else:  # no im2col view of a consumer, channels tied by a grouped conv (the ranking is per channel), residual
            session.unpruned[g.name] = why
    residual_left = any(w == "a residual stream" for w in session.unpruned.values())
    session.remedy = ("pass residual=True to prune residual streams too" if residual_left
                      else "use a method that prunes these groups too (HierarchicalConfig, L1Config)")
    return out


def group_problems(group, model_modules, moments: dict[str, Moments]) -> list[Problem]:
    """One :class:`Problem` per consumer of ``group``, weights read from ``model_modules``."""
    problems = []
    for member in group.consumers:
        module = model_modules[member.name]
        W = weight_matrix(module).detach().double().cpu()
        cov = clean_cov(moments[member.name])
        per_root = member.per_root()
        blocks = [columns(module, per_root.get(r, [])) for r in range(group.channels)]
        mask = torch.ones(W.shape[1], dtype=torch.bool)
        for blk in blocks:
            mask[blk] = False
        problems.append(Problem(W, cov, blocks, torch.nonzero(mask).flatten()))
    return problems


def _grid(channels: int, delta: float) -> list[int]:
    """Kept counts c − ⌊c·iδ⌋ for i = 0, 1, … while at least one channel stays."""
    keeps, i = [], 0
    while True:
        k = channels - int(math.floor(channels * i * delta + 1e-9))
        if k < 1 or i * delta >= 1:
            break
        if not keeps or k != keeps[-1]:
            keeps.append(k)
        i += 1
    return keeps


def _binary_widths(session, cands, curves, lo, hi, delta):
    """t ↦ keep: θ = t·θ_max; each candidate takes the largest grid sparsity with e ≤ θ within [lo, hi].

    ``lo``/``hi`` bound each group's grid position (missing: no bound). Since e_l(k) never decreases as
    k shrinks, the kept counts — and so the cost — fall monotonically with t, as ``alloc.search`` needs.
    """
    channels = session.channels
    steps = session.steps
    grids = {g.index: _grid(g.channels, delta) for g in cands}
    errs = {gi: [float(curves[gi][k]) for k in grids[gi]] for gi in grids}
    theta_max = max((max(e) for e in errs.values()), default=1.0) or 1.0

    def widths(t: float) -> list[int]:
        theta = t * theta_max * (1 + 1e-12)
        keep = list(channels)
        for gi, grid in grids.items():
            first, last = lo.get(gi, 0), min(hi.get(gi, len(grid) - 1), len(grid) - 1)
            choice = first
            for i in range(first, last + 1):
                if errs[gi][i] <= theta:
                    choice = i
                else:
                    break
            keep[gi] = resolve_round_to(grid[choice], channels[gi], steps[gi])
        return keep

    return widths, grids


def _rank_all(session, cands, model, cfg, removed: dict[int, list[int]]):
    names = sorted({c.name for g in cands for c in g.consumers})
    moments = consumer_moments(model, names, session.batches, stride=cfg.sampling_stride)
    modules = dict(model.named_modules())
    rankings = {}
    for g in cands:
        problems = group_problems(g, modules, moments)
        rankings[g.index] = greedy_rank(problems, g.channels, ridge=cfg.ridge, exclude=removed.get(g.index, ()))
    return rankings, moments


def _masked_compensated(session, cfg, plan, moments):
    """A copy of the model with ``plan`` masked and its consumers compensated (full-size weights)."""
    model = copy.deepcopy(session.work)
    compensate_model(session.work, model, session.graph, plan, session.batches, ridge=cfg.ridge,
                     rescale=cfg.rescale, sampling_stride=cfg.sampling_stride, residual=True, full=True,
                     moments=moments)
    handles = mask_hooks(model, mask_sites(session.graph, plan))
    return model, handles


def _curves(rankings) -> dict[int, torch.Tensor]:
    return {gi: rk.curve() for gi, rk in rankings.items()}


def _plan(rankings, keep, channels) -> dict[int, list[int]]:
    """Each ranked group loses the channels ranked after its first ``keep``."""
    return {gi: sorted(rk.order[keep[gi]:]) for gi, rk in rankings.items() if keep[gi] < channels[gi]}


def _stepwise_search(session, cfg, cands, rankings, moments):
    """``rounds`` > 1: θ-search per round with each group's sparsity moving at most δ; re-ranking between.

    Round r aims at the cost 1 − (1 − target)·r/rounds (the target itself from the last round on, which
    repeats until the target is reachable within the step). Channels removed in a round stay removed.
    """
    kind, value = cfg.target
    channels = session.channels
    keep, lo = list(channels), {}
    for r in range(1, cfg.rounds + int(math.ceil(1 / cfg.delta)) + 1):
        grids = {g.index: _grid(g.channels, cfg.delta) for g in cands}
        hi = {gi: lo.get(gi, 0) + 1 for gi in grids}
        widths, _ = _binary_widths(session, cands, _curves(rankings), lo, hi, cfg.delta)
        widths = _no_revival(widths, keep)
        reach = session.cost.kept(widths(1.0), kind)
        final = r >= cfg.rounds
        if final and reach <= value * (1 + cfg.tolerance):
            return session.allocate(widths), rankings, r
        step_target = value if final else 1 - (1 - value) * r / cfg.rounds
        if reach <= step_target:
            keep = alloc.search(widths, session.cost, step_target, kind=kind, tolerance=cfg.tolerance).keep
        else:
            keep = widths(1.0)
        lo = {gi: _grid_index(grids[gi], keep[gi]) for gi in grids}
        plan = _plan(rankings, keep, channels)
        model, handles = _masked_compensated(session, cfg, plan, moments)
        try:
            rankings, _ = _rank_all(session, cands, model, cfg, plan)
        finally:
            for h in handles:
                h.remove()
    return session.allocate(_no_revival(widths, keep)), rankings, r  # raises: the target is out of reach


@register_planner(CaPConfig)
def cap_planner(session: PruneSession) -> dict[int, list[int]]:
    cfg: CaPConfig = session.config
    if not session.batches:
        raise ConfigError("CaP needs calibration images; pass data=a DataBundle or (images, labels).")
    cands = candidates(session, cfg.residual)
    if not cands:
        raise ConfigError(f"CaP can prune none of this model's groups ({listing(session.unpruned)}); {session.remedy}.")
    channels = session.channels
    rankings, original_moments = _rank_all(session, cands, session.work, cfg, {})
    rounds = 1
    if cfg.allocation == "uniform":
        keep = session.allocate(_only(alloc.uniform(channels, round_to=session.steps), channels, rankings))
    elif cfg.target is None:
        widths, _ = _binary_widths(session, cands, _curves(rankings), {}, {}, cfg.delta)
        keep = _match_channels(widths, channels, float(cfg.ratio))
    elif cfg.rounds == 1:
        widths, _ = _binary_widths(session, cands, _curves(rankings), {}, {}, cfg.delta)
        keep = session.allocate(widths)
    else:
        keep, rankings, rounds = _stepwise_search(session, cfg, cands, rankings, original_moments)
    plan = _plan(rankings, keep, channels)
    session.notes["cap"] = {
        "allocation": cfg.allocation, "delta": cfg.delta, "rounds": rounds,
        "sampling_stride": cfg.sampling_stride, "ridge": cfg.ridge, "rescale": cfg.rescale,
        "residual": cfg.residual, "pruned_groups": [g.name for g in cands],
        "relative_loss": {session.graph.groups[gi].name: float(rk.curve()[keep[gi]]) for gi, rk in rankings.items()},
    }

    def compensate_after_surgery(pruned):
        # session.work *is* the pruned model now: weights and statistics come from the caller's model
        session.notes["compensation"] = apply_compensation(
            session.original, pruned, session.graph, plan, session.batches, ridge=cfg.ridge,
            rescale=cfg.rescale, sampling_stride=cfg.sampling_stride, residual=cfg.residual,
            moments=original_moments,
        )

    session.post_surgery.append(compensate_after_surgery)
    return plan


def _grid_index(grid: list[int], keep: int) -> int:
    """The largest grid position whose kept count is still ≥ keep (sparsity at or below the current)."""
    idx = 0
    for i, k in enumerate(grid):
        if k >= keep:
            idx = i
    return idx


def _only(widths, channels, groups):
    """Restrict a widths function to the given group indices (the others keep every channel)."""

    def restricted(t):
        return [k if gi in groups else c for gi, (k, c) in enumerate(zip(widths(t), channels))]

    return restricted


def _no_revival(widths, current):
    """Never keep more than ``current`` (channels removed in an earlier round stay removed)."""

    def capped(t):
        return [min(k, c) for k, c in zip(widths(t), current)]

    return capped


def _match_channels(widths, channels, ratio: float) -> list[int]:
    """Bisect the knob so that the fraction of removed channels (over all groups) is ≈ ``ratio``."""
    total = sum(channels)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        removed = (total - sum(widths(mid))) / total
        if removed < ratio:
            lo = mid
        else:
            hi = mid
    return widths(hi) if ratio > 0 else list(channels)

