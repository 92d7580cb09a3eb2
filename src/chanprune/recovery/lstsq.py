"""CP's form of the consumer refit: least squares on sampled rows (docs/cp.md, step 3).

    [W′, b′] = argmin ‖Y − X_S W′ᵀ − 1 b′ᵀ‖_F²

Centring X and Y first and then solving without an intercept gives the same W′ and b′ = ȳ − W′x̄.
On the same rows this equals the covariance form :func:`~chanprune.recovery.compensation.compensate`
(W′ = W Σ̃_{C,S} Σ̃_{SS}⁻¹ with Y = XWᵀ + b); tests/recovery checks that the two agree.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError


def lstsq_refit(
    X: torch.Tensor,
    Y: torch.Tensor,
    keep_cols: Sequence[int] | torch.Tensor,
    fit_intercept: bool = True,
    ridge: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W′ ∈ ℝ^{n×|S|}, b′ ∈ ℝ^n) from rows X (M × D) and targets Y (M × n), float64.

    ``keep_cols`` are the columns S of X the refit may use (in this order). Without ``fit_intercept``
    b′ = 0. ``ridge`` > 0 adds λ = ridge·tr(Σ̃)/D (Σ̃ the covariance of all D columns of X, the unit
    :func:`~chanprune.recovery.compensation.compensate` uses) to the normal equations; with ridge = 0
    the minimum-norm least-squares solution is returned; so it is where X is constant on every row (dead
    units: λ = 0) or the regularised Gram matrix is still singular — rank-deficient statistics never fail.
    """
    X = torch.as_tensor(X).double()
    Y = torch.as_tensor(Y).double()
    if Y.dim() == 1:
        Y = Y[:, None]
    if X.shape[0] != Y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; pass the targets of the same rows.")
    cols = torch.as_tensor(keep_cols, dtype=torch.long)
    xs = X[:, cols]
    if fit_intercept:
        x_mean, y_mean = xs.mean(0), Y.mean(0)
        xs, yc = xs - x_mean, Y - y_mean
    else:
        yc = Y
    w = None
    if cols.numel() == 0:
        w = torch.zeros(Y.shape[1], 0, dtype=torch.float64, device=Y.device)
    elif ridge > 0:
        gram = xs.T @ xs / xs.shape[0]
        spread = X - X.mean(0) if fit_intercept else X
        lam = ridge * float((spread**2).mean())
        if lam > 0:  # λ = 0 when every input is constant on the rows (dead units): nothing to regularise
            gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype)
            solution, info = torch.linalg.solve_ex(gram, xs.T @ yc / xs.shape[0])
            if int(info) == 0 and torch.isfinite(solution).all():
                w = solution.T
    if w is None:  # no ridge, or a Gram matrix that is singular even with it: the minimum-norm solution
        w = torch.linalg.lstsq(xs, yc, driver="gelsd").solution.T
    b = (y_mean - w @ x_mean) if fit_intercept else torch.zeros(Y.shape[1], dtype=torch.float64, device=Y.device)
    return w, b
