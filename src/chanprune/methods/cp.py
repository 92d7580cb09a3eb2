"""CP: LASSO channel selection + least-squares reconstruction (He, Zhang, Sun 2017; docs/cp.md).

Layer by layer from the input side, for every group CP may prune:
  sample       X: the consumer's im2col rows at ``points_per_image`` random positions per calibration
               image, taken from the network pruned *so far* (removed channels masked, earlier refits
               applied; ``source_X="original"`` takes them from the original instead); Y: the original
               network's consumer response at the same positions. Where that gives fewer than
               ``min_rows_per_input``·(D + 1) rows (the paper samples 5000 images, a calibration set
               here is often ~100), more positions per image are taken so the refit is not underdetermined
  select (i)   β = argmin (1/2N)‖vec Y_r − Zβ‖² + α‖β‖₁, Z_j = vec(X_jW_jᵀ)/‖W_j‖_F on min(``lasso_rows``, M)
               random rows (the code's min(400, M/20) assumes M ≈ 50 000 rows), from the statistics ZᵀZ,
               Zᵀy (Z, Mn × c, is never formed). ``lasso_solver="lars"`` (default): the exact LASSO path
               (scikit-learn's ``lars_path_gram``), taking the largest α with exactly c′ non-zeros;
               ``"cd"``: CP's code — coordinate-descent ``Lasso`` with α's upper bound doubled until fewer
               than c′ channels survive, then bisected until c′ ≤ |S| ≤ (1 + rank_tol)c′.
               |S| is not assumed monotone in α; if the window is missed the smallest |S| ≥ c′ is used.
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

Multi-branch (§3.3 of the paper, ``residual_correction``, on by default): residual streams stay
unpruned (only groups with a single non-depthwise producer are pruned, so inside a residual block the
inner convolutions lose channels), and the last convolution of a branch — a consumer whose output
reaches an addition only through BatchNorms, y_add = a⊙z + c + s — is refit to the original branch
output *plus the error the shortcut now carries*: z* = Y_b + (Y_s − Y_s′)/a, Y_s the shortcut operand of
the addition in the original network and Y_s′ in the network pruned so far, both at the sampled
positions, a the BatchNorms' per-channel scale γ/√(v+ε) (channels with |a| ≈ 0 get no correction). The
least squares decouples over output channels, so this minimises the error of the block's sum itself.
The corrected target is used by the LASSO selection and by the refit. With ``source_X="original"``
nothing upstream has changed in the samples, so there is no correction. Branch ends are read from the
traced graph; the shortcut operand is caught at the addition itself (a ``TorchFunctionMode`` that watches
additions reading the branch's output), so any residual block written with ``+``/``add`` works.

Cost: each group's sampling pass starts at a cached *cut* before the group (:class:`~chanprune.recovery.stats.Replay`, checked
against a full forward) instead of at the network input, and collects the consumer rows and the shortcut
operands in one go, so the passes add up to about two forwards over the calibration set.

Not implemented: the paper's channel sampler in front of a branch's first layer (block inputs are never
pruned here), the alternating schedule, and the "3C" factorisations.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .. import allocation as alloc
from .. import distributed
from ..config import PruneConfig
from ..errors import ConfigError
from ..recovery.compensation import Compensation, NormFolds, refit_skip_reason, write_consumer
from ..recovery.lasso import LassoStats, Selection, lasso_select
from ..recovery.lstsq import lstsq_refit
from ..recovery.stats import Replay, StopPass, call_order, columns, consumer_rows, gather_rows, weight_matrix
from ..surgery import mask_hooks, mask_sites
from .pipeline import PruneSession, listing, register_planner


@dataclass
class CPConfig(PruneConfig):
    """Per-layer LASSO channel selection and least-squares reconstruction of the consumer."""

    method: ClassVar[str] = "cp"
    refits_consumers: ClassVar[bool] = True
    allocations: ClassVar[tuple[str, ...]] = ("uniform",)
    points_per_image: int = 10
    min_rows_per_input: float = 4.0
    lasso_rows: int = 400
    rank_tol: float = 0.1
    fit_intercept: bool = True
    ridge: float = 1e-3
    source_X: str = "pruned"
    residual_correction: bool = True
    lasso_solver: str = "lars"
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
        if self.lasso_solver not in ("lars", "cd"):
            raise ConfigError(f"lasso_solver must be 'lars' (the exact LASSO path) or 'cd' (coordinate descent with "
                              f"the penalty bisected, as CP's code), not {self.lasso_solver!r}.")
        if self.source_X not in ("pruned", "original"):
            raise ConfigError(f"source_X must be 'pruned' or 'original', not {self.source_X!r}.")


# --------------------------------------------------------------------------- multi-branch correction

_ADD_NAMES = {"add", "add_", "__add__", "__iadd__", "__radd__"}


@dataclass
class BranchEnd:
    """A consumer whose output z reaches an addition through per-channel affine layers only:
    y_add = a⊙z + c + s. ``last`` is the module whose output is the addition's operand (the consumer
    itself or its last BatchNorm), ``scale`` is a (one entry per output channel of the consumer)."""

    consumer: str
    last: str
    scale: torch.Tensor


def _bn_scale(bn: nn.Module) -> torch.Tensor:
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().cpu()
    return scale


def branch_ends(graph, names) -> dict[str, BranchEnd]:
    """{consumer: BranchEnd} for the named consumers that end a branch of a residual addition.

    Read from the traced graph: the consumer's only output goes through BatchNorms (eval mode, running
    statistics) and then into an elementwise addition; anything else on the way (an activation, a
    second reader) means the consumer does not end a branch.
    """
    modules = dict(graph.model.named_modules())
    out: dict[str, BranchEnd] = {}
    for name in names:
        module = modules[name]
        scale = torch.ones(module.weight.shape[0], dtype=torch.float64)
        last = name
        after = graph.successors(module)
        while len(after) == 1:
            nxt = after[0]
            target = nxt.module
            if isinstance(target, (nn.BatchNorm1d, nn.BatchNorm2d)) and target.running_var is not None:
                if target.num_features != scale.shape[0]:
                    break
                scale = scale * _bn_scale(target)
                last = graph.names[target]
                after = graph.successors(nxt)
                continue
            if nxt.kind == "add":
                out[name] = BranchEnd(name, last, scale)
            break
    return out


class _ShortcutCatcher(TorchFunctionMode):
    """Records the other operand of every addition that reads a marked tensor (a branch's output); raises
    :class:`StopPass` after an addition once ``done()`` says the pass has everything."""

    def __init__(self, marked: dict, found: dict, done):
        super().__init__()
        self.marked, self.found, self.done = marked, found, done

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _ADD_NAMES and len(args) >= 2 and "alpha" not in kwargs:
            hit = False
            for who, tensor in list(self.marked.items()):
                other = args[1] if args[0] is tensor else args[0] if args[1] is tensor else None
                if isinstance(other, torch.Tensor) and who not in self.found:
                    self.found[who] = other.detach().clone()
                    hit = True
            if hit and self.done():
                raise StopPass
        return func(*args, **kwargs)


def sample_rows(replay: Replay, consumers, ends: dict[str, BranchEnd], points_per_image, seed: int):
    """({consumer: X}, {branch end: S}) in one pass (from the replay's cut): X the consumer's im2col rows
    and S the shortcut operand of the branch end's addition, both at the positions
    :func:`chanprune.recovery.stats.sample_positions` draws — the rows :func:`chanprune.recovery.consumer_rows`
    returns for the same model, seed and counts."""
    modules = dict(replay.model.named_modules())
    ss: dict[str, list[torch.Tensor]] = {n: [] for n in ends}
    marked: dict[str, torch.Tensor] = {}
    found: dict[str, torch.Tensor] = {}
    batch = [0]

    def points(n):
        return int(points_per_image[n] if isinstance(points_per_image, dict) else points_per_image)

    def mark(n):
        def hook(_m, _inputs, output):
            marked[n] = output

        return hook

    def start(bi):
        batch[0] = bi
        marked.clear()
        found.clear()

    def collect(bi):
        for n in ends:
            if n not in found:
                raise ConfigError(f"the residual addition after layer {n!r} was not seen in the forward pass; "
                                  "pass residual_correction=False.")
            s = found[n]
            ss[n].append(gather_rows(n, seed, bi, s.reshape(s.shape[0], s.shape[1], -1).transpose(1, 2), points(n)))

    def done() -> bool:
        return len(found) == len(ends)

    def catcher():
        return _ShortcutCatcher(marked, found, lambda: not replay.pending and done()) if ends else None

    marks = [modules[e.last].register_forward_hook(mark(n)) for n, e in ends.items()]
    try:
        xs = consumer_rows(replay, list(consumers), points_per_image=points_per_image, seed=seed, on_batch=start,
                           after_batch=collect, mode=catcher, done=done, require="CP")
    finally:
        for h in marks:
            h.remove()
    return xs, {n: distributed.all_gather_rows(torch.cat(r, 0)) for n, r in ss.items()}  # rank order, as xs


def shortcut_rows(model: nn.Module, ends: dict[str, BranchEnd], batches, points_per_image, seed: int) -> dict[str, torch.Tensor]:
    """{consumer: S (M × n, float64)}: the shortcut operand of each branch end's addition, at the output
    positions :func:`chanprune.recovery.consumer_rows` samples for that consumer (same seed and counts)."""
    return sample_rows(Replay(model, batches), [], ends, points_per_image, seed)[1]


def corrected_target(y: torch.Tensor, s_orig: torch.Tensor, s_pruned: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Y_b + (Y_s − Y_s′)/a; output channels with |a| below 1e-8·max|a| carry no correction."""
    a = scale.double()
    live = a.abs() > 1e-8 * float(a.abs().max().clamp_min(1e-300))
    inv = torch.where(live, 1.0 / torch.where(live, a, torch.ones_like(a)), torch.zeros_like(a))
    return y + (s_orig - s_pruned) * inv


# --------------------------------------------------------------------------- planner


def eligible_groups(session: PruneSession) -> list:
    """Groups CP prunes: non-residual, every consumer a Linear or a dense conv, not tied by a grouped conv
    (its per-channel LASSO cannot keep the grouped conv's slices equal). The others are recorded with the
    reason in ``session.unpruned``."""
    out = []
    for g in session.graph.groups:
        why = refit_skip_reason(g)
        if why is None:
            out.append(g)
        else:
            session.unpruned[g.name] = why
    session.remedy = "use a method that prunes these groups too (HierarchicalConfig, L1Config)"
    return out


def _inputs(module: torch.nn.Module) -> int:
    return module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels


def _select(group, xs, targets, mods, graph, plan, keep: int, cfg: CPConfig, gen) -> Selection:
    """Step (i): LASSO over the group's channels, rows of all its consumers stacked."""
    stats = None
    for member in group.consumers:
        n = member.name
        X, W = xs[n], weight_matrix(mods[n]).detach().double().cpu()
        per_root = member.per_root()
        mine = {i for v in per_root.values() for i in v}
        gone = graph.removed(plan, n, "in")
        fixed = columns(mods[n], [i for i in range(_inputs(mods[n])) if i not in mine and i not in gone])
        rows = torch.randperm(X.shape[0], generator=gen)[: min(cfg.lasso_rows, X.shape[0])]
        target = targets[n][rows] - X[rows][:, fixed] @ W[:, fixed].T  # the other (kept) inputs' share
        blocks = [columns(mods[n], per_root.get(r, [])) for r in range(group.channels)]
        part = LassoStats.from_consumer(X[rows], W, target, blocks)
        stats = part if stats is None else stats + part
    return lasso_select(stats, keep=keep, tol=cfg.rank_tol, solver=cfg.lasso_solver)


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


@register_planner(CPConfig)
def cp_planner(session: PruneSession) -> dict[int, list[int]]:
    cfg: CPConfig = session.config
    if not session.batches:
        raise ConfigError("CP needs calibration images; pass data=a DataBundle or (images, labels).")
    graph = session.graph
    groups = eligible_groups(session)
    if not groups:
        raise ConfigError(f"CP can prune none of this model's groups ({listing(session.unpruned)}); "
                          "use a method without a consumer refit such as HierarchicalConfig or L1Config.")
    channels = session.channels
    chosen = {g.index for g in groups}
    uniform = alloc.uniform(channels, round_to=session.steps)
    keep = session.allocate(lambda t: [k if gi in chosen else c for gi, (k, c) in enumerate(zip(uniform(t), channels))])

    calls, count = call_order(session.work, session.example_inputs)
    order = {n: i for i, n in enumerate(calls)}
    groups.sort(key=lambda g: min(order.get(p.name, 1 << 30) for p in g.producers))
    orig = dict(session.work.named_modules())
    names = sorted({c.name for g in groups for c in g.consumers})
    images = sum(len(b[0]) if isinstance(b, (tuple, list)) else len(b) for b in session.batches)
    ppi = {  # enough rows for a well-posed refit: min_rows_per_input·(D + 1) where the maps allow it
        n: max(cfg.points_per_image, math.ceil(cfg.min_rows_per_input * (weight_matrix(orig[n]).shape[1] + 1) / images))
        for n in names
    }
    ends: dict[str, BranchEnd] = {}
    if cfg.residual_correction and cfg.source_X == "pruned":
        ends = branch_ends(graph, names)
    x_orig, s_orig = sample_rows(Replay(session.work, session.batches), names, ends, ppi, cfg.seed)
    y_orig = {}
    for n in names:
        W = weight_matrix(orig[n]).detach().double().cpu()
        b = orig[n].bias.detach().double().cpu() if orig[n].bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        y_orig[n] = x_orig[n] @ W.T + b
    rows_used = {n: int(x.shape[0]) for n, x in x_orig.items()}
    if cfg.source_X == "pruned":
        x_orig = {}  # only the targets are needed from the original

    work = copy.deepcopy(session.work)  # the network pruned so far: removed channels masked, refits applied
    mods = dict(work.named_modules())
    replay = Replay(work, session.batches)
    cuts = [n for n in calls if count[n] == 1]  # a module called twice per forward cannot be a cut
    gen = torch.Generator().manual_seed(cfg.seed)
    plan: dict[int, list[int]] = {}
    refits: dict[str, tuple] = {}
    folds = NormFolds(graph)
    layers: dict[str, dict] = {}
    for g in groups:
        if keep[g.index] >= g.channels:
            continue
        consumers = [c.name for c in g.consumers]
        targets = {n: y_orig[n] for n in consumers}
        corrections: dict[str, float] = {}
        if cfg.source_X == "pruned":
            handles = mask_hooks(work, mask_sites(graph, plan))
            try:
                cut = replay.cut_before(cuts, [p.name for p in g.producers])
                if cut is not None and (replay.cut is None or cuts.index(cut) > cuts.index(replay.cut)):
                    replay.move_to(cut)  # through the groups pruned so far, with their refits
                here = {n: ends[n] for n in consumers if n in ends}
                xs, s_pruned = sample_rows(replay, consumers, here, ppi, cfg.seed)
            finally:
                for h in handles:
                    h.remove()
            for n, end in here.items():  # the branch's last layer also takes over the shortcut's error
                targets[n] = corrected_target(y_orig[n], s_orig[n], s_pruned[n], end.scale)
                corrections[n] = float((targets[n] - y_orig[n]).norm() / (y_orig[n] - y_orig[n].mean(0)).norm().clamp_min(1e-300))
        else:
            xs = {n: x_orig[n] for n in consumers}
        sel = _select(g, xs, targets, mods, graph, plan, keep[g.index], cfg, gen)
        plan[g.index] = sorted(set(range(g.channels)) - set(sel.selected))
        errors = []
        for n in consumers:
            module = orig[n]
            gone = graph.removed(plan, n, "in")
            kept_in = [i for i in range(_inputs(module)) if i not in gone]
            w_new, b_new, err = _refit(module, xs[n], targets[n], kept_in, cfg)
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
        if corrections:  # ‖(Y_s − Y_s′)/a‖ relative to the spread of Y_b: the shortcut error taken over
            layers[g.name]["shortcut_correction"] = max(corrections.values())
    session.notes["cp"] = {
        "points_per_image": cfg.points_per_image, "rows": rows_used,
        "source_X": cfg.source_X, "layers": layers, "branch_ends": sorted(ends),
        "unpruned_groups": [g.name for g in graph.groups if g.index not in chosen],
    }

    def write_refits(pruned):
        # session.work *is* the pruned model now; shapes and BN statistics come from the caller's model
        before = dict(session.original.named_modules())
        pm = dict(pruned.named_modules())
        for n, (w_new, b_new, kept_in, folded) in refits.items():
            module = before[n]
            rows = graph.kept_channels(plan, n, module.weight.shape[0])
            comp = Compensation(w_new[rows], b_new[rows], float("nan"), float("nan"))
            if folded:
                folds.set(n, rows, comp.bias)
            write_consumer(pm[n], module, comp, rows, kept_in, bias="skip" if folded else "bias")
        folds.apply(pruned, session.original, plan, full=False)

    session.post_surgery.append(write_refits)
    return plan

