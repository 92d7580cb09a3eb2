"""Reshapings of a weight into a matrix, its SVD, the rank rule, the truncated projection and the
nuclear-norm sub-gradient (docs/trp.md).

For a conv weight W ∈ ℝ^{N×C×kh×kw}:

* ``channel``: M = W.reshape(N, C·kh·kw)                      (rank r → k×k conv with r outputs, then 1×1)
* ``spatial``: M = W.permute(1, 2, 0, 3).reshape(C·kh, N·kw)   (rank r → kh×1 conv, then 1×kw)
  — the transpose of the n·kw × c·kh matrix; the singular values are the same.

A Linear weight (out × in) is its own matrix (``linear``). SVDs are computed in float64.

Rank rules: ``energy`` keeps the fewest σ with Σ_{i≤r} σ_i² ≥ e·Σ σ_i² — the same rule as the
effective-filter analysis (:func:`chanprune.analysis.effective.effective_rank` on λ = σ²), which is what
this module calls; ``value`` keeps #{σ_i ≥ T} (the official TRP code's criterion for decomposing a
TRP-trained model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..analysis.effective import effective_rank
from ..errors import ConfigError

__all__ = ["RULES", "to_matrix", "from_matrix", "singular_values", "select_rank", "energy_kept", "project",
           "Projection", "nuclear_subgradient"]

RULES = ("energy", "value")
SUBGRADS = ("truncated", "full")


def _check_scheme(weight: torch.Tensor, scheme: str) -> None:
    if scheme in ("channel", "spatial"):
        if weight.dim() != 4:
            raise ConfigError(f"the {scheme!r} scheme needs a 4-d conv weight, got shape {tuple(weight.shape)}; "
                              "use scheme='linear' for Linear layers.")
    elif scheme == "linear":
        if weight.dim() != 2:
            raise ConfigError(f"the 'linear' scheme needs a 2-d weight, got shape {tuple(weight.shape)}.")
    else:
        raise ConfigError(f"unknown low-rank scheme {scheme!r}; choose 'channel', 'spatial' or 'linear'.")


def to_matrix(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """The matrix 𝒯(W) whose rank the scheme factorises."""
    _check_scheme(weight, scheme)
    if scheme == "channel":
        return weight.reshape(weight.shape[0], -1)
    if scheme == "spatial":
        n, c, kh, kw = weight.shape
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return weight


def from_matrix(matrix: torch.Tensor, scheme: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """𝒯⁻¹: the weight of ``shape`` whose matrix is ``matrix``."""
    shape = tuple(shape)
    if scheme == "channel":
        return matrix.reshape(shape)
    if scheme == "spatial":
        n, c, kh, kw = shape
        return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()
    if scheme == "linear":
        return matrix.reshape(shape)
    raise ConfigError(f"unknown low-rank scheme {scheme!r}; choose 'channel', 'spatial' or 'linear'.")


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = matrix.detach().double()
    if not torch.isfinite(m).all():
        raise ConfigError("a weight holds NaN or infinite values, so it has no SVD; train or load a finite model.")
    return torch.linalg.svd(m, full_matrices=False)


def singular_values(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """σ of 𝒯(W), descending, float64."""
    return torch.linalg.svdvals(to_matrix(weight.detach(), scheme).double())


def check_rule(rule: str, threshold: float) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown rank rule {rule!r}; choose 'energy' (keep a fraction of Σσ²) or 'value' (keep σ ≥ T).")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise ConfigError(f"the rank threshold must be a number, got {threshold!r}.")
    if rule == "energy" and not 0 < threshold <= 1:
        raise ConfigError(f"the energy threshold must lie in (0, 1], got {threshold}; e.g. 0.9 keeps 90% of Σσ².")
    if rule == "value" and threshold < 0:
        raise ConfigError(f"the value threshold must be >= 0, got {threshold}; e.g. 0.05.")


def select_rank(sigma: torch.Tensor, rule: str = "energy", threshold: float = 0.9) -> int:
    """Rank kept by a rule on singular values ``sigma`` (descending); 0 only for an all-zero spectrum.

    ``energy``: the fewest r with Σ_{i≤r} σ_i² ≥ threshold·Σσ² (via the analysis' energy rule);
    ``value``: #{σ_i ≥ threshold}.
    """
    check_rule(rule, threshold)
    sigma = sigma.detach().double().flatten()
    if rule == "energy":
        return effective_rank(sigma.square(), "energy", float(threshold))
    return int((sigma >= threshold).sum())


def energy_kept(sigma: torch.Tensor, rank: int) -> float:
    """Σ_{i≤rank} σ_i² / Σ σ_i² (1.0 for an all-zero spectrum)."""
    lam = sigma.detach().double().square()
    total = float(lam.sum())
    return 1.0 if total == 0 else float(lam[:rank].sum()) / total


@dataclass
class Projection:
    """One truncated-SVD projection of a weight: ``rank`` of ``full_rank`` kept, keeping ``energy`` of Σσ²."""

    weight: torch.Tensor         # 𝒯⁻¹(U_r Σ_r V_rᵀ), same shape and dtype as the input
    subgradient: torch.Tensor    # 𝒯⁻¹(U_r V_rᵀ) (truncated) or 𝒯⁻¹(U Vᵀ) over all σ > 0 (full)
    rank: int
    full_rank: int
    energy: float


def project(weight: torch.Tensor, scheme: str, rule: str = "energy", threshold: float = 0.9, *,
            rank: int | None = None, subgrad: str = "truncated") -> Projection:
    """Truncated SVD of 𝒯(W) at the rank the rule (or an explicit ``rank``) gives, and the nuclear sub-gradient."""
    if subgrad not in SUBGRADS:
        raise ConfigError(f"subgrad must be 'truncated' or 'full', got {subgrad!r}.")
    matrix = to_matrix(weight.detach(), scheme)
    u, s, vh = _svd(matrix)
    full = min(matrix.shape)
    if rank is None:
        r = select_rank(s, rule, threshold)
    else:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= full:
            raise ConfigError(f"rank must be an integer from 0 to {full} for this layer, got {rank!r}.")
        r = rank
    approx = (u[:, :r] * s[:r]) @ vh[:r]
    if subgrad == "truncated":
        g = u[:, :r] @ vh[:r]
    else:
        nz = int((s > s[0] * max(matrix.shape) * torch.finfo(torch.float64).eps).sum()) if full and s[0] > 0 else 0
        g = u[:, :nz] @ vh[:nz]
    shape = weight.shape
    return Projection(
        weight=from_matrix(approx, scheme, shape).to(weight.dtype),
        subgradient=from_matrix(g, scheme, shape).to(weight.dtype),
        rank=r, full_rank=full, energy=energy_kept(s, r),
    )


def nuclear_subgradient(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """𝒯⁻¹(U Vᵀ) over all nonzero σ: a sub-gradient of ‖𝒯(W)‖_* (its gradient when the σ are distinct and > 0)."""
    return project(weight, scheme, rank=min(to_matrix(weight, scheme).shape), subgrad="full").subgradient
