"""LASSO channel selection: which c′ of a layer's c input channels best reproduce its output (He et al. 2017, step i).

    β = argmin (1/2N)‖y − Zβ‖² + α‖β‖₁,   Z_j = vec(X_jW_jᵀ)/‖W_j‖_F,

with α searched so that exactly c′ entries of β are non-zero; the selected channels are those entries.
Z (rows × c, rows = sampled positions × output channels) is never formed: :class:`LassoStats` holds
ZᵀZ, Zᵀy and the sums that centring needs, and statistics of several consumers of one group add up.
A recovery primitive: any method that picks channels by how well a refit can reproduce a layer uses it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError


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
                 max_iter: int = 40, solver: str = "lars") -> Selection:
    """Pick ``keep`` columns by LASSO, min (1/2N)‖y − Zβ‖² + α‖β‖₁, with α searched for the count.

    ``design`` is Z (with ``y``) or a :class:`LassoStats`. The intercept is removed by centring.

    ``solver="lars"`` (default) computes the exact LASSO path from ZᵀZ and Zᵀy (scikit-learn's
    ``lars_path_gram``, method ``"lasso"``) and reads off the largest α whose solution has exactly
    ``keep`` non-zeros — at the path's knots and between them (variables can also leave the active set,
    so |S| is not assumed monotone in α); failing that, the largest α with c′ ≤ |S| ≤ (1 + tol)c′, else
    the smallest |S| ≥ c′ (``success`` False). ``solver="cd"`` is CP's code: scikit-learn's coordinate
    descent ``Lasso`` with α's upper bound doubled, then bisected (at most ``max_iter`` fits) until
    c′ ≤ |S| ≤ (1 + tol)c′, on an equivalent (c+1) × c design Z′, y′ with [Z′ y′]ᵀ[Z′ y′] = [Z y]ᵀ[Z y]
    (centred) and the penalty rescaled by N/(c+1). Where the LASSO minimiser is unique both give it
    (coordinate descent to its tolerance); the path lands on c′ exactly more often, so the final trim of
    S to ``keep`` by |β| (both solvers) rarely has anything to do. With collinear columns the minimiser
    is not unique and the two may zero different ones.

    Columns that are constant (dead channels) are never selected by the LASSO; when at most ``keep``
    are alive it is skipped (all live channels stay, dead ones fill up by index; ``success`` is then False).
    """
    if solver not in ("lars", "cd"):
        raise ConfigError(f"solver must be 'lars' or 'cd', not {solver!r}.")
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
    if solver == "lars":
        return _lars_select(gram, zy, rows, keep, tol, live)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

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


def _lars_select(gram: torch.Tensor, zy: torch.Tensor, rows: int, keep: int, tol: float, live: int) -> Selection:
    from sklearn.linear_model import lars_path_gram

    dead = torch.diagonal(gram) <= 1e-12 * float(torch.diagonal(gram).max().clamp_min(1e-300))
    g, v = gram.clone(), zy.clone()
    g[dead, :] = 0.0
    g[:, dead] = 0.0
    g[dead, dead] = 1.0  # a dead column stays out of the path (zero correlation) without a singular Gram
    v[dead] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "degenerate regressors" / early stopping on collinear columns
        alphas, _, coefs = lars_path_gram(Xy=v.numpy(), Gram=g.numpy(), n_samples=rows, method="lasso")
    coefs = torch.from_numpy(np.ascontiguousarray(coefs))
    alphas = torch.from_numpy(np.ascontiguousarray(alphas))
    points = [(float(alphas[k]), coefs[:, k]) for k in range(coefs.shape[1])]
    points += [(float(alphas[k] + alphas[k + 1]) / 2, (coefs[:, k] + coefs[:, k + 1]) / 2) for k in range(coefs.shape[1] - 1)]
    points.sort(key=lambda p: -p[0])  # largest α (sparsest) first
    counts = [int((beta != 0).sum()) for _, beta in points]
    for accept in (lambda n: n == keep, lambda n: keep <= n <= (1 + tol) * keep):
        for (alpha, beta), n in zip(points, counts):
            if accept(n):
                return _trim(beta, keep, alpha, n, True, coefs.shape[1])
    above = [(n, -alpha, i) for i, ((alpha, _), n) in enumerate(zip(points, counts)) if n >= keep]
    if above:
        n, _, i = min(above)
        return _trim(points[i][1], keep, points[i][0], n, False, coefs.shape[1])
    # the path never reached keep channels (collinear live columns): least squares ranks them
    best = torch.linalg.lstsq(gram, zy[:, None], driver="gelsd").solution[:, 0]
    return _trim(best, keep, 0.0, live, False, coefs.shape[1])


def _trim(beta: torch.Tensor, keep: int, alpha: float, count: int, success: bool, fits: int) -> Selection:
    order = torch.argsort(beta.abs(), descending=True, stable=True)
    return Selection(sorted(order[:keep].tolist()), alpha, count, success, fits)
