"""CP: LASSO channel selection + least-squares reconstruction (He, Zhang, Sun 2017; methods.md §3).

Layer by layer from the input side, for every group CP may prune:
  sample       X: the consumer's im2col rows at ``points_per_image`` random positions per calibration
               image, taken from the network pruned *so far* (removed channels masked, earlier refits
               applied; ``source_X="original"`` takes them from the original instead); Y: the original
               network's consumer response at the same positions. Where that gives fewer than
               ``min_rows_per_input``·(D + 1) rows (the paper samples 5000 images, a calibration set
               here is often ~100), more positions per image are taken so the refit is not underdetermined
  select (i)   β = argmin (1/2N)‖vec Y_r − Zβ‖² + α‖β‖₁, Z_j = vec(X_jW_jᵀ)/‖W_j‖_F on min(``lasso_rows``, M)
               random rows (the code's min(400, M/20) assumes M ≈ 50 000 rows), solved by scikit-learn's
               Lasso on an equivalent (c+1)-row design built from ZᵀZ, so Z (Mn × c) is never formed;
               α's upper bound doubles until fewer than c′
               channels survive, then α is bisected until c′ ≤ |S| ≤ (1 + rank_tol)c′; |S| is not
               assumed monotone in α, and if the window is missed the smallest |S| ≥ c′ seen is used.
               S is then trimmed to exactly c′ by |β|
  refit (ii)   [W′, b′] = argmin ‖Y − X_SW′ᵀ − 1b′ᵀ‖² on all rows (intercept fitted; ``ridge``·tr(Σ̃)/D
               added to the normal equations, default 1e-3, which keeps refits from small calibration
               sets from amplifying held-out errors), written into the working copy so later layers
               sample through it. A bias-free consumer's b′ goes into the running means of the
               BatchNorms that read it (chanprune.recovery.compensation.NormFolds), else into a bias
  surgery      the channels outside S are removed (Torch-Pruning, verified against the masked original);
               then the refitted consumer weights are written into the pruned model. The verification
               checks the surgery only: the refit changes weights afterwards, on purpose.

Per-layer budgets c′ come from the shared MAC/params-target search over the uniform rule, restricted to
the groups CP prunes; a group left at full width is neither selected nor refit. Y_r is Y minus the contribution of the consumer's other (kept) inputs, which
matters for consumers reading a concatenation (DenseNet).

Not implemented: the *multi-branch* case (residual streams stay unpruned: only groups with a single
non-depthwise producer are pruned, so the shortcut correction Y_b + (Y_s − Y_s′) and the channel sampler
are not needed), the alternating schedule, and the "3C" factorisations.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import allocation as alloc
from ..api import PruneSession, register_method
from ..config import PruneConfig
from ..errors import ConfigError
from ..recovery.compensation import Compensation, NormFolds, is_residual, kept_channels, write_consumer
from ..recovery.lstsq import lstsq_refit
from ..recovery.stats import columns, consumer_rows, supported, weight_matrix
from ..surgery import mask_hooks, mask_sites


@dataclass
class CPConfig(PruneConfig):
    """Per-layer LASSO channel selection and least-squares reconstruction of the consumer."""

    method: ClassVar[str] = "cp"
    allocations: ClassVar[tuple[str, ...]] = ("uniform",)
    points_per_image: int = 10
    min_rows_per_input: float = 4.0
    lasso_rows: int = 400
    rank_tol: float = 0.1
    fit_intercept: bool = True
    ridge: float = 1e-3
    source_X: str = "pruned"
    calibration: int = 128

    def __post_init__(self):
        super().__post_init__()
        for name in ("points_per_image", "lasso_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
        if not (isinstance(self.min_rows_per_input, (int, float)) and self.min_rows_per_input >= 0):
            raise ConfigError(f"min_rows_per_input must be a number >= 0, not {self.min_rows_per_input!r}.")
        if not (isinstance(self.rank_tol, (int, float)) and 0 <= self.rank_tol <= 1):
            raise ConfigError(f"rank_tol must lie in [0, 1], not {self.rank_tol!r}; e.g. rank_tol=0.1.")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise ConfigError(f"ridge must be a number >= 0, not {self.ridge!r}.")
        if self.source_X not in ("pruned", "original"):
            raise ConfigError(f"source_X must be 'pruned' or 'original', not {self.source_X!r}.")


# --------------------------------------------------------------------------- LASSO selection


@dataclass
class Selection:
    selected: list[int]     # exactly `keep` channels
    alpha: float
    lasso_count: int        # |S| of the LASSO solution before trimming
    success: bool           # the bisection reached c′ ≤ |S| ≤ (1 + tol)c′
    fits: int


@dataclass
class LassoStats:
    """Sufficient statistics of the LASSO design: ZᵀZ, Zᵀy, column sums of Z, Σy, Σy², row count.

    Rows of several consumers stack by adding their statistics, and Z (Mn × c) is never formed.
    """

    gram: torch.Tensor
    zy: torch.Tensor
    zsum: torch.Tensor
    ysum: float
    yy: float
    rows: int

    @classmethod
    def from_design(cls, Z: torch.Tensor, y: torch.Tensor) -> "LassoStats":
        Z, y = Z.double(), y.double().reshape(-1)
        return cls(Z.T @ Z, Z.T @ y, Z.sum(0), float(y.sum()), float(y @ y), Z.shape[0])

    @classmethod
    def from_consumer(cls, X: torch.Tensor, W: torch.Tensor, Y: torch.Tensor, blocks) -> "LassoStats":
        """Z_j = vec(X_jW_jᵀ)/‖W_j‖_F for the column blocks ``blocks[j]`` of X (M × D), W (n × D), Y (M × n)."""
        X, W, Y = X.double(), W.double(), Y.double()
        c = len(blocks)
        owner = torch.full((W.shape[1],), -1, dtype=torch.long)
        scale = torch.zeros(W.shape[1], dtype=torch.float64)
        for j, cols in enumerate(blocks):
            owner[cols] = j
            scale[cols] = 1.0 / W[:, cols].norm().clamp_min(1e-12)
        used = torch.nonzero(owner >= 0).flatten()
        own, Xu, Wu = owner[used], X[:, used], W[:, used] * scale[used]
        onehot = torch.zeros(len(used), c, dtype=torch.float64)
        onehot[torch.arange(len(used)), own] = 1.0
        # ⟨vec X_aW_aᵀ, vec X_bW_bᵀ⟩ summed over the coordinates a ∈ j, b ∈ k
        gram = onehot.T @ ((Xu.T @ Xu) * (Wu.T @ Wu)) @ onehot
        zy = ((Y.T @ Xu) * Wu).sum(0) @ onehot
        zsum = (Wu.sum(0) * Xu.sum(0)) @ onehot
        return cls(gram, zy, zsum, float(Y.sum()), float((Y * Y).sum()), Y.numel())

    def __add__(self, other: "LassoStats") -> "LassoStats":
        return LassoStats(self.gram + other.gram, self.zy + other.zy, self.zsum + other.zsum,
                          self.ysum + other.ysum, self.yy + other.yy, self.rows + other.rows)

    def centred(self):
        """(ZcᵀZc, Zcᵀyc, ycᵀyc): the intercept removed."""
        n = max(self.rows, 1)
        zbar, ybar = self.zsum / n, self.ysum / n
        return self.gram - n * torch.outer(zbar, zbar), self.zy - n * zbar * ybar, self.yy - n * ybar * ybar


def lasso_select(design, y: torch.Tensor | None = None, keep: int = 1, tol: float = 0.1,
                 max_iter: int = 40) -> Selection:
    """Pick ``keep`` columns by LASSO with the penalty searched as CP's code does (see module doc).

    ``design`` is Z (with ``y``) or a :class:`LassoStats`. The intercept is removed by centring. The fit
    runs on an equivalent (c+1) × c design Z′, y′ with [Z′ y′]ᵀ[Z′ y′] = [Z y]ᵀ[Z y] (centred) and the
    penalty rescaled by N/(c+1), which has the same minimiser as (1/2N)‖y − Zβ‖² + α‖β‖₁. Columns that
    are constant (dead channels) are never selected by the LASSO; when at most ``keep`` are alive it is
    skipped (all live channels stay, dead ones fill up by index; ``success`` is then False).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    stats = design if isinstance(design, LassoStats) else LassoStats.from_design(design, y)
    gram, zy, yy = stats.centred()
    c, rows = gram.shape[0], max(stats.rows, 1)
    if keep >= c:
        return Selection(list(range(c)), 0.0, c, True, 0)
    if not (torch.isfinite(gram).all() and torch.isfinite(zy).all()):
        raise ConfigError("the LASSO design has NaN or infinite entries (non-finite activations); check the model and data.")
    diag = torch.diagonal(gram)
    live = int((diag > 1e-12 * float(diag.max().clamp_min(1e-300))).sum())
    alpha_max = float(zy.abs().max()) / rows
    if live <= keep or alpha_max <= 0:  # every live channel stays; dead ones fill up by index
        return _trim(diag.clamp_min(0), keep, 0.0, live, False, 0)
    aug = torch.zeros(c + 1, c + 1, dtype=torch.float64)
    aug[:c, :c], aug[:c, c], aug[c, :c], aug[c, c] = gram, zy, zy, yy
    evals, evecs = torch.linalg.eigh((aug + aug.T) / 2)
    root = evals.clamp_min(0).sqrt()[:, None] * evecs.T
    Zr = np.asfortranarray(root[:, :c].numpy())
    yr = np.ascontiguousarray(root[:, c].numpy())
    fits = [0]

    def fit(alpha: float):
        fits[0] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = Lasso(alpha=alpha * rows / (c + 1), fit_intercept=False, max_iter=5000, tol=1e-4)
            model.fit(Zr, yr, check_input=False)
        coef = torch.from_numpy(model.coef_.copy())
        return coef, int((coef != 0).sum())

    best, best_count, best_alpha = None, c + 1, 0.0
    lo, hi = 0.0, alpha_max * 1e-3
    for _ in range(64):  # double the upper bound until fewer than keep survive (α ≥ α_max zeroes all)
        coef, n = fit(hi)
        if n < keep:
            break
        if n <= best_count:
            best, best_count, best_alpha = coef, n, hi
        if n <= (1 + tol) * keep:
            return _trim(best, keep, best_alpha, best_count, True, fits[0])
        lo, hi = hi, hi * 2
    success = False
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        coef, n = fit(mid)
        if keep <= n <= best_count:
            best, best_count, best_alpha = coef, n, mid
        if keep <= n <= (1 + tol) * keep:
            success = True
            break
        if n < keep:
            hi = mid
        else:
            lo = mid
    if best is None:  # never ≥ keep channels at α > 0: least squares (α = 0) ranks them
        best = torch.linalg.lstsq(gram, zy[:, None], driver="gelsd").solution[:, 0]
        best_count, best_alpha = live, 0.0
    return _trim(best, keep, best_alpha, best_count, success, fits[0])


def _trim(beta: torch.Tensor, keep: int, alpha: float, count: int, success: bool, fits: int) -> Selection:
    order = torch.argsort(beta.abs(), descending=True, stable=True)
    return Selection(sorted(order[:keep].tolist()), alpha, count, success, fits)


# --------------------------------------------------------------------------- planner


def eligible_groups(session: PruneSession) -> list:
    """Groups CP prunes: non-residual, every consumer a Linear or a dense conv."""
    return [
        g for g in session.graph.groups
        if g.consumers and all(supported(c.module) for c in g.consumers) and not is_residual(g)
    ]


def _execution_order(model: torch.nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    order: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs, _output):
        order.setdefault(names[module], len(order))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _inputs(module: torch.nn.Module) -> int:
    return module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels


def _removed_inputs(graph, plan, name: str) -> set[int]:
    out: set[int] = set()
    for gi, removed in plan.items():
        rem = set(removed)
        for m in graph.groups[gi].consumers:
            if m.name == name:
                out |= {i for i, r in zip(m.idxs, m.root_idxs) if r in rem}
    return out


def _per_root(member) -> dict[int, list[int]]:
    """Root channel → the consumer's input channels that carry it."""
    out: dict[int, list[int]] = {}
    for i, r in zip(member.idxs, member.root_idxs):
        out.setdefault(int(r), []).append(int(i))
    return out


def _select(group, xs, y_orig, mods, graph, plan, keep: int, cfg: CPConfig, gen) -> Selection:
    """Step (i): LASSO over the group's channels, rows of all its consumers stacked."""
    stats = None
    for member in group.consumers:
        n = member.name
        X, W = xs[n], weight_matrix(mods[n]).detach().double().cpu()
        per_root = _per_root(member)
        mine = {i for v in per_root.values() for i in v}
        gone = _removed_inputs(graph, plan, n)
        fixed = columns(mods[n], [i for i in range(_inputs(mods[n])) if i not in mine and i not in gone])
        rows = torch.randperm(X.shape[0], generator=gen)[: min(cfg.lasso_rows, X.shape[0])]
        target = y_orig[n][rows] - X[rows][:, fixed] @ W[:, fixed].T  # the other (kept) inputs' share
        blocks = [columns(mods[n], per_root.get(r, [])) for r in range(group.channels)]
        part = LassoStats.from_consumer(X[rows], W, target, blocks)
        stats = part if stats is None else stats + part
    return lasso_select(stats, keep=keep, tol=cfg.rank_tol)


def _refit(module, X, Y, kept_in, cfg: CPConfig):
    """Step (ii): least squares on all sampled rows; (W′, b′, relative residual)."""
    cols = columns(module, kept_in)
    if cfg.fit_intercept:
        w_new, b_new = lstsq_refit(X, Y, cols, ridge=cfg.ridge)
    else:
        b_new = module.bias.detach().double().cpu() if module.bias is not None else torch.zeros(Y.shape[1], dtype=torch.float64)
        w_new, _ = lstsq_refit(X, Y - b_new, cols, fit_intercept=False, ridge=cfg.ridge)
    resid = Y - X[:, cols] @ w_new.T - b_new
    spread = (Y - Y.mean(0)).pow(2).sum().clamp_min(1e-300)
    return w_new, b_new, float(resid.pow(2).sum() / spread)


def cp_planner(session: PruneSession) -> dict[int, list[int]]:
    cfg: CPConfig = session.config
    if not session.batches:
        raise ConfigError("CP needs calibration images; pass data=a DataBundle or (images, labels).")
    graph = session.graph
    groups = eligible_groups(session)
    if not groups:
        raise ConfigError("CP found no prunable group outside residual streams whose consumers it can refit.")
    channels = session.channels
    chosen = {g.index for g in groups}
    uniform = alloc.uniform(channels, round_to=cfg.round_to)
    keep = session.allocate(lambda t: [k if gi in chosen else c for gi, (k, c) in enumerate(zip(uniform(t), channels))])

    order = _execution_order(session.work, session.example_inputs)
    groups.sort(key=lambda g: min(order.get(p.name, 1 << 30) for p in g.producers))
    orig = dict(session.work.named_modules())
    names = sorted({c.name for g in groups for c in g.consumers})
    images = sum(len(b[0]) if isinstance(b, (tuple, list)) else len(b) for b in session.batches)
    ppi = {  # enough rows for a well-posed refit: min_rows_per_input·(D + 1) where the maps allow it
        n: max(cfg.points_per_image, math.ceil(cfg.min_rows_per_input * (weight_matrix(orig[n]).shape[1] + 1) / images))
        for n in names
    }
    x_orig = consumer_rows(session.work, names, session.batches, ppi, cfg.seed)
    y_orig = {}
    for n in names:
        W = weight_matrix(orig[n]).detach().double().cpu()
        b = orig[n].bias.detach().double().cpu() if orig[n].bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        y_orig[n] = x_orig[n] @ W.T + b

    work = copy.deepcopy(session.work)  # the network pruned so far: removed channels masked, refits applied
    mods = dict(work.named_modules())
    gen = torch.Generator().manual_seed(cfg.seed)
    plan: dict[int, list[int]] = {}
    refits: dict[str, tuple] = {}
    folds = NormFolds(graph)
    layers: dict[str, dict] = {}
    for g in groups:
        if keep[g.index] >= g.channels:
            continue
        consumers = [c.name for c in g.consumers]
        if cfg.source_X == "pruned":
            handles = mask_hooks(work, mask_sites(graph, plan))
            try:
                xs = consumer_rows(work, consumers, session.batches, ppi, cfg.seed)
            finally:
                for h in handles:
                    h.remove()
        else:
            xs = {n: x_orig[n] for n in consumers}
        sel = _select(g, xs, y_orig, mods, graph, plan, keep[g.index], cfg, gen)
        plan[g.index] = sorted(set(range(g.channels)) - set(sel.selected))
        errors = []
        for n in consumers:
            module = orig[n]
            gone = _removed_inputs(graph, plan, n)
            kept_in = [i for i in range(_inputs(module)) if i not in gone]
            w_new, b_new, err = _refit(module, xs[n], y_orig[n], kept_in, cfg)
            rows_all = list(range(module.weight.shape[0]))
            folded = module.bias is None and folds.set(n, rows_all, b_new) is not None
            write_consumer(mods[n], module, Compensation(w_new, b_new, err, float("nan")), rows_all, kept_in,
                           full=True, bias="skip" if folded else "bias")
            folds.apply(work, session.work, plan, full=True)
            refits[n] = (w_new, b_new, kept_in, folded)
            errors.append(err)
        layers[g.name] = {
            "kept": keep[g.index], "channels": g.channels, "alpha": sel.alpha, "lasso_selected": sel.lasso_count,
            "bisection_reached_window": sel.success, "lasso_fits": sel.fits, "relative_refit_error": max(errors),
        }
    session.notes["cp"] = {
        "points_per_image": cfg.points_per_image, "rows": {n: int(x.shape[0]) for n, x in x_orig.items()},
        "source_X": cfg.source_X, "layers": layers,
        "unpruned_groups": [g.name for g in graph.groups if g.index not in chosen],
    }

    def write_refits(pruned):
        # session.work *is* the pruned model now; shapes and BN statistics come from the caller's model
        before = dict(session.original.named_modules())
        pm = dict(pruned.named_modules())
        for n, (w_new, b_new, kept_in, folded) in refits.items():
            module = before[n]
            rows = kept_channels(graph, plan, n, module.weight.shape[0])
            comp = Compensation(w_new[rows], b_new[rows], float("nan"), float("nan"))
            if folded:
                folds.set(n, rows, comp.bias)
            write_consumer(pm[n], module, comp, rows, kept_in, bias="skip" if folded else "bias")
        folds.apply(pruned, session.original, plan, full=False)

    session.post_surgery.append(write_refits)
    return plan


register_method(CPConfig, cp_planner)
