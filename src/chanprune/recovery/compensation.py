"""Closed-form consumer compensation (CaP; docs/recovery.md) and its use as a recovery step.

For a consumer y = Wx + b whose input columns outside S are removed, minimising
E‖(Wx + b) − (W′x_S + b′)‖² over (W′, b′) gives

    W′ = W Σ̃_{C,S} Σ̃_{SS}⁻¹,        b′ = b + Wμ − W′μ_S,

with loss L(S) = tr(WΣ̃Wᵀ) − tr(BᵀΣ̃_{SS}⁻¹B), B = Σ̃_{S,C}Wᵀ (Σ̃ the centred covariance of x). The
solve is a Cholesky factorisation of Σ̃_{SS} + λI, λ = ``ridge``·tr(Σ̃)/D; non-positive variances are
set to 10⁻²⁰ first. :func:`compensate` is this formula; :func:`apply_compensation` applies it to every
consumer of a pruned model, from the *original* model's consumer-input statistics.

Ridge defaults: 1e-8 for the primitive (numerical safety only), 1e-3 for the model-level steps. With
calibration sets of tens of images the unregularised refits amplify held-out errors through deep nets
(the test zoo's random ResNet-56 at width 0.5, L1 to 50 % of the MACs, 16 calibration images: relative
output error on other images 20 with ridge 1e-8, 0.23 with 1e-3, 0.99 without compensation).

Where b′ goes: the consumer's bias; for a bias-free consumer whose output reaches only BatchNorms
(directly, or through concatenations and average pools), those BatchNorms' running means — in eval
mode BN(y + b′) = γ(y + b′ − m)/√(v + ε) + β, so m′ = m − b′ gives the same output for any γ, v (the
scale cancels; :class:`NormFolds`); otherwise a bias is added to the consumer (an added bias counts a
few MACs in Torch-Pruning's counter, and :mod:`chanprune.io` records it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..graph import PRUNABLE_TYPES
from .stats import Moments, columns, consumer_moments, supported, weight_matrix

_TINY_VARIANCE = 1e-20
_MAX_MOMENT_BYTES = 512 * 1024 * 1024  # covariances held at once by apply_compensation


class Compensation(NamedTuple):
    weight: torch.Tensor              # W′, n × |S| (columns in keep_cols order), float64
    bias: torch.Tensor                # b′, n, float64
    loss: float                       # E‖(Wx+b) − (W′x_S+b′)‖² of the returned W′, b′ (= L(S) without rescale)
    loss_uncompensated: float         # tr(W_P Σ_PP W_Pᵀ): the columns P simply dropped, W_S and b kept


def clean_cov(moments: Moments) -> torch.Tensor:
    """Σ̃ with non-positive variances set to 10⁻²⁰ (dead or constant inputs), float64."""
    cov = moments.cov.double().cpu().clone()
    diag = torch.diagonal(cov)
    diag[diag <= 0] = _TINY_VARIANCE
    return cov


def ridge_scale(cov: torch.Tensor) -> float:
    """tr(Σ̃)/D: the unit of ``ridge`` (λ = ridge·tr(Σ̃)/D, the same in compensation and ranking)."""
    return float(torch.diagonal(cov).mean()) if cov.shape[0] else 0.0


def _chol(matrix: torch.Tensor, ridge: float, scale: float) -> torch.Tensor:
    """Cholesky factor of matrix + λI, λ = ridge·scale; λ grows ×10 (from 1e-12·scale when ridge = 0, up to
    1e-1·scale) on failure.

    A rank-deficient covariance (fewer samples than coordinates, duplicate channels) can lose positive
    definiteness to rounding at a tiny ridge; the retry keeps the solve defined.
    """
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    scale = scale if scale > 0 else 1.0  # an all-constant input (dead units) has no variance to scale by
    lam = ridge
    while True:
        factor, info = torch.linalg.cholesky_ex(matrix + lam * scale * eye)
        if int(info) == 0:
            return factor
        lam = max(lam, 1e-13)  # ridge = 0 on a singular matrix: the smallest ridge that makes it solvable
        if lam >= 1e-1:
            raise ConfigError(
                "the covariance of the kept inputs is singular (duplicate or constant channels, or too few "
                "calibration samples); pass ridge > 0 (e.g. ridge=1e-8) or more calibration images."
            )
        lam *= 10


def refit_skip_reason(group, residual: bool = False) -> str | None:
    """Why a consumer refit (CP, CaP) leaves ``group`` whole, or None when it can prune it."""
    if not group.consumers:
        return "no layer reads it"
    odd = next((c.name for c in group.consumers if not supported(c.module)), None)
    if odd is not None:
        return f"read by {odd!r}, a grouped or depthwise conv without an im2col view"
    if group.garbled:
        return f"Torch-Pruning maps it {group.garbled}"
    if group.classes == []:
        return "it cannot lose channels safely (a grouped conv reads it together with other channels)"
    if group.classes is not None:
        return "its channels are tied across the slices of a grouped conv"
    if group.is_residual and not residual:
        return "a residual stream"
    return None


def _as_w(W: torch.Tensor) -> torch.Tensor:
    W = torch.as_tensor(W).detach().double().cpu()
    return W.reshape(W.shape[0], -1)


def _complement(dim: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(dim, dtype=torch.bool)
    mask[keep] = False
    return torch.nonzero(mask).flatten()


def expected_loss(W, b, W_new, b_new, moments: Moments, keep_cols) -> float:
    """E‖(Wx + b) − (W′x_S + b′)‖² under the moments (float64): tr(VΣ̃Vᵀ) + ‖E[error]‖²."""
    W = _as_w(W)
    keep = torch.as_tensor(keep_cols, dtype=torch.long)
    b = torch.zeros(W.shape[0], dtype=torch.float64) if b is None else torch.as_tensor(b).detach().double().cpu()
    V = W.clone()
    V[:, keep] -= torch.as_tensor(W_new).double().cpu()
    mean_err = V @ moments.mu.double().cpu() + b - torch.as_tensor(b_new).double().cpu()
    return float(torch.einsum("nd,de,ne->", V, moments.cov.double().cpu(), V) + mean_err @ mean_err)


def closed_form_loss(W, moments: Moments, keep_cols, ridge: float = 0.0) -> float:
    """L(S) = tr(WΣ̃Wᵀ) − tr(BᵀΣ̃_SS⁻¹B), B = Σ̃_{S,C}Wᵀ (ridge as in :func:`compensate`)."""
    W = _as_w(W)
    cov = clean_cov(moments)
    keep = torch.as_tensor(keep_cols, dtype=torch.long)
    total = float(torch.einsum("nd,de,ne->", W, cov, W))
    if keep.numel() == 0:
        return total
    B = cov[keep] @ W.T
    return total - float((B * torch.cholesky_solve(B, _chol(cov[keep][:, keep], ridge, ridge_scale(cov)))).sum())


def compensate(
    W: torch.Tensor,
    b: torch.Tensor | None,
    moments: Moments,
    keep_cols: Sequence[int] | torch.Tensor,
    ridge: float = 1e-8,
    rescale: bool = False,
) -> Compensation:
    """The closed-form refit of a consumer (W: n × D, or the conv weight itself) keeping columns S.

    ``rescale`` (CaP's experimental option, meant for a consumer followed by BN) then scales each row
    so its output variance matches the original, W′_j ← W′_j·√(W_jΣ̃W_jᵀ / W′_jΣ̃_SSW′_jᵀ), before b′
    is computed, so the means still match; the returned loss is then that of the rescaled weights
    (≥ L(S)).
    """
    if ridge < 0:
        raise ConfigError(f"ridge must be >= 0, not {ridge!r}.")
    W = _as_w(W)
    n, dim = W.shape
    if moments.mu.shape[0] != dim:
        raise ConfigError(f"the weight has {dim} input coordinates but the statistics have {moments.mu.shape[0]}.")
    b = torch.zeros(n, dtype=torch.float64) if b is None else torch.as_tensor(b).detach().double().cpu()
    keep = torch.as_tensor(keep_cols, dtype=torch.long).flatten()
    cov = clean_cov(moments)
    mu = moments.mu.double().cpu()
    if keep.numel():
        css = cov[keep][:, keep]
        w_new = torch.cholesky_solve(cov[keep] @ W.T, _chol(css, ridge, ridge_scale(cov))).T  # W Σ̃_CS Σ̃_SS⁻¹
        if rescale:
            num = torch.einsum("nd,de,ne->n", W, cov, W)
            den = torch.einsum("nd,de,ne->n", w_new, css, w_new)
            scale = torch.where(den > 0, (num / den.clamp_min(1e-300)).sqrt(), torch.ones_like(den))
            w_new = w_new * scale[:, None]
        b_new = b + W @ mu - w_new @ mu[keep]
    else:
        w_new = torch.zeros(n, 0, dtype=torch.float64)
        b_new = b + W @ mu
    loss = expected_loss(W, b, w_new, b_new, moments, keep)
    dropped = _complement(dim, keep)
    wp = W[:, dropped]
    loss_unc = float(torch.einsum("nd,de,ne->", wp, moments.sigma.double().cpu()[dropped][:, dropped], wp))
    return Compensation(w_new, b_new, loss, loss_unc)


# --------------------------------------------------------------------------- applying it to models


class NormFolds:
    """b′ of bias-free consumers, folded into the running means of the BatchNorms that read them.

    Several consumers may feed one BatchNorm (a concatenation), so the running means are always
    rebuilt from the original model's: m′ = m − Σ_consumers b′ (in the BN's channels).
    """

    def __init__(self, graph):
        self.graph = graph
        self.parts: dict[str, dict[str, dict[int, float]]] = {}
        self._sites: dict[str, list | None] = {}
        self._modules = dict(graph.model.named_modules())

    def set(self, name: str, rows: Sequence[int], bias: torch.Tensor) -> str | None:
        """Record b′ (aligned with ``rows``) of consumer ``name``; returns the BN names, or None if impossible."""
        if name not in self._sites:
            self._sites[name] = self.graph.norm_sites(self._modules[name])
        sites = self._sites[name]
        if not sites:
            return None
        values = bias.detach().double().cpu().tolist()
        self.parts[name] = {
            bn: {where[row]: values[k] for k, row in enumerate(rows) if row in where} for bn, where in sites
        }
        return ", ".join(bn for bn, _ in sites)

    def apply(self, target: nn.Module, original: nn.Module, plan: Mapping[int, Sequence[int]], full: bool) -> None:
        names = {bn for per_bn in self.parts.values() for bn in per_bn}
        orig = {n: m for n, m in original.named_modules() if n in names}
        tgt = {n: m for n, m in target.named_modules() if n in names}
        shifts: dict[str, dict[int, float]] = {}
        for per_bn in self.parts.values():
            for bn, values in per_bn.items():
                acc = shifts.setdefault(bn, {})
                for idx, v in values.items():
                    acc[idx] = acc.get(idx, 0.0) + v
        with torch.no_grad():
            for bn, values in shifts.items():
                mean = orig[bn].running_mean.detach().double().cpu().clone()
                idx = torch.as_tensor(list(values), dtype=torch.long)
                mean[idx] -= torch.as_tensor(list(values.values()), dtype=torch.float64)
                if not full:
                    mean = mean[self.graph.kept_channels(plan, bn, mean.shape[0])]
                rm = tgt[bn].running_mean
                if rm.shape != mean.shape:
                    raise ConfigError(f"BatchNorm {bn!r} has {rm.shape[0]} channels after pruning, expected {mean.shape[0]}.")
                rm.copy_(mean.to(rm.dtype).to(rm.device))


@dataclass
class ConsumerEdit:
    """What a plan removes from one consumer, in the original model's indexing."""

    name: str
    removed_in: set[int] = field(default_factory=set)     # input channels
    removed_out: set[int] = field(default_factory=set)    # output channels (rows)
    groups: list[str] = field(default_factory=list)       # names of the pruned groups it reads

    def kept_in(self, module: nn.Module) -> list[int]:
        total = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        return [c for c in range(total) if c not in self.removed_in]

    def kept_out(self, module: nn.Module) -> list[int]:
        return [r for r in range(module.weight.shape[0]) if r not in self.removed_out]


def consumer_edits(graph, plan: Mapping[int, Sequence[int]], residual: bool = True):
    """({consumer name: ConsumerEdit}, skipped) for the consumers of the pruned groups.

    Groups that are residual/tied (:attr:`~chanprune.graph.ChannelGroup.is_residual`) are skipped unless ``residual``; consumers
    without an im2col view (grouped convs) are skipped. ``skipped`` lists (name, reason).
    """
    plan = {int(g): {int(i) for i in idxs} for g, idxs in plan.items() if len(idxs)}
    edits: dict[str, ConsumerEdit] = {}
    skipped: list[tuple[str, str]] = []
    for gi, removed in plan.items():
        group = graph.groups[gi]
        if not residual and group.is_residual:
            skipped.append((group.name, "residual or tied group (several producers)"))
            continue
        for member in group.consumers:
            if not supported(member.module):
                skipped.append((member.name, "grouped convolution"))
                continue
            edits.setdefault(member.name, ConsumerEdit(member.name)).groups.append(group.name)
    # every removal the consumers see, from any group of the plan
    for gi, removed in plan.items():
        for member in graph.groups[gi].members:
            edit = edits.get(member.name)
            if edit is None:
                continue
            hit = {i for i, r in zip(member.idxs, member.root_idxs) if r in removed}
            if member.role == "in":
                edit.removed_in |= hit
            elif isinstance(member.module, PRUNABLE_TYPES):
                edit.removed_out |= hit
    return edits, skipped


def write_consumer(
    target: nn.Module,
    original: nn.Module,
    comp: Compensation,
    rows: Sequence[int],
    kept_in: Sequence[int],
    *,
    full: bool = False,
    bias: str = "bias",
) -> None:
    """Write W′ (and b′) into ``target``.

    ``full=False``: ``target`` is the pruned layer (rows and input channels already sliced). ``full=True``:
    ``target`` has the original shape; W′ goes into the kept rows/columns and the removed input columns
    are zeroed (a masked stand-in for the pruned model). ``bias``: ``"bias"`` writes b′ into the layer's
    bias, adding one if it has none; ``"skip"`` leaves it (b′ was folded into BatchNorms, :class:`NormFolds`).
    """
    rows_t = torch.as_tensor(list(rows), dtype=torch.long)
    kept_t = torch.as_tensor(list(kept_in), dtype=torch.long)
    kshape = tuple(original.weight.shape[2:])
    w_new = comp.weight.reshape((len(rows_t), len(kept_t)) + kshape).to(target.weight.dtype)
    with torch.no_grad():
        if full:
            weight = target.weight.data
            r = rows_t.to(weight.device)
            weight[r] = 0
            weight[r[:, None], kept_t.to(weight.device)[None, :]] = w_new.to(weight.device)
            sel = r
        else:
            want = (len(rows_t), len(kept_t)) + kshape
            if tuple(target.weight.shape) != want:
                raise ConfigError(f"layer has shape {tuple(target.weight.shape)} after pruning, expected {want}.")
            target.weight.data.copy_(w_new.to(target.weight.device))
            sel = slice(None)
        if bias == "skip":
            return
        if target.bias is None:
            target.bias = nn.Parameter(torch.zeros(target.weight.shape[0], dtype=target.weight.dtype,
                                                   device=target.weight.device))
        target.bias.data[sel] = comp.bias.to(target.bias.dtype).to(target.bias.device)


def _chunks(names: list[str], modules: Mapping[str, nn.Module], budget: int) -> list[list[str]]:
    chunks, current, used = [], [], 0
    for name in names:
        dim = weight_matrix(modules[name]).shape[1]
        need = dim * dim * 8
        if current and used + need > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += need
    if current:
        chunks.append(current)
    return chunks


def compensate_model(
    original: nn.Module,
    target: nn.Module,
    graph,
    plan: Mapping[int, Sequence[int]],
    batches,
    *,
    ridge: float = 1e-3,
    rescale: bool = False,
    sampling_stride: int = 1,
    residual: bool = True,
    full: bool = False,
    moments: Mapping[str, Moments] | None = None,
) -> dict:
    """Refit every consumer of the plan's groups in ``target`` from ``original``'s input statistics.

    ``graph`` is the :class:`~chanprune.graph.PruningGraph` the plan indexes (its group members give the
    original indexing). ``full`` as in :func:`write_consumer`. ``moments`` may pass precomputed
    statistics of ``original``. Returns a JSON-friendly report.
    """
    t0 = time.perf_counter()
    edits, skipped = consumer_edits(graph, plan, residual=residual)
    orig_modules = dict(original.named_modules())
    target_modules = dict(target.named_modules())
    names = [n for n in edits if edits[n].removed_in]
    report: dict = {"consumers": {}, "skipped": [{"name": n, "reason": r} for n, r in skipped]}
    if not names:
        report["seconds"] = time.perf_counter() - t0
        return report
    known = dict(moments or {})
    todo = [n for n in names if n not in known]
    for chunk in _chunks(todo, orig_modules, _MAX_MOMENT_BYTES):
        known.update(consumer_moments(original, chunk, batches, stride=sampling_stride))
    folds = NormFolds(graph)
    for name in names:
        edit, module = edits[name], orig_modules[name]
        rows, kept_in = edit.kept_out(module), edit.kept_in(module)
        W = weight_matrix(module).detach().double().cpu()[rows]
        b = None if module.bias is None else module.bias.detach().double().cpu()[rows]
        comp = compensate(W, b, known[name], columns(module, kept_in), ridge=ridge, rescale=rescale)
        where = folds.set(name, rows, comp.bias) if module.bias is None else None
        write_consumer(target_modules[name], module, comp, rows, kept_in, full=full,
                       bias="skip" if where else "bias")
        energy = float(torch.einsum("nd,de,ne->", W, clean_cov(known[name]), W))
        report["consumers"][name] = {
            "loss": comp.loss, "loss_uncompensated": comp.loss_uncompensated,
            "relative_loss": comp.loss / energy if energy > 0 else 0.0,
            "bias": f"running_mean of {where}" if where else ("bias" if module.bias is not None else "added bias"),
            "kept_inputs": len(kept_in), "inputs": len(kept_in) + len(edit.removed_in),
        }
    folds.apply(target, original, plan, full)
    report["seconds"] = time.perf_counter() - t0
    return report


def apply_compensation(
    original: nn.Module,
    pruned: nn.Module,
    graph,
    plan: Mapping[int, Sequence[int]],
    batches,
    *,
    ridge: float = 1e-3,
    rescale: bool = False,
    sampling_stride: int = 1,
    residual: bool = True,
    moments: Mapping[str, Moments] | None = None,
) -> dict:
    """Recovery without retraining: refit the consumers of a pruned model in closed form (in place).

    ``original`` is the unpruned model, ``pruned`` the result of removing ``plan`` (group index → root
    indices, as returned by a planner) from a copy of it, ``graph`` the PruningGraph the plan indexes,
    ``batches`` calibration batches of (images, labels). Each consumer of a pruned group gets W′ (its kept
    input columns) and b′ from the original model's consumer-input moments (:func:`compensate`).
    ``moments`` may pass statistics of ``original`` already computed (same ``sampling_stride``).

    Residual/tied groups (:attr:`~chanprune.graph.ChannelGroup.is_residual`) are refit too by default: a removed channel of a residual
    stream is zero in every tensor of the stream (each producer is removed), so each consumer still
    reads its original input minus the removed columns, which is exactly the setting of the formula.
    ``residual=False`` skips them (recorded under ``"skipped"``).
    Returns a JSON-friendly report (per-consumer losses, where each b′ went, skipped groups).
    """
    if not batches:
        raise ConfigError("recover='compensate' needs calibration images; pass data=a DataBundle or (images, labels).")
    from ..progress import track

    batches = track(batches, "compensation (consumer statistics)")
    return compensate_model(
        original, pruned, graph, plan, batches, ridge=ridge, rescale=rescale,
        sampling_stride=sampling_stride, residual=residual, full=False, moments=moments,
    )
