"""Rank rule, reshapings, projection and nuclear-norm sub-gradient (methods.md §8, Verify 1, 2, 5)."""
import pytest
import torch

from chanprune.analysis.effective import effective_rank
from chanprune.errors import ConfigError
from chanprune.lowrank import energy_kept, from_matrix, nuclear_subgradient, project, select_rank, singular_values, to_matrix


def _with_spectrum(sigma, rows, cols, seed=0):
    """A rows×cols matrix with exactly the singular values ``sigma`` (random orthonormal factors)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(sigma), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(sigma), generator=g, dtype=torch.float64))
    return (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("sigma,energy,expected", [
    ([3.0, 2.0, 1.0, 0.5], 0.5, 1),          # 9/14.25 = 0.63
    ([3.0, 2.0, 1.0, 0.5], 0.9, 2),          # 13/14.25 = 0.912
    ([3.0, 2.0, 1.0, 0.5], 0.95, 3),         # 14/14.25 = 0.982
    ([3.0, 2.0, 1.0, 0.5], 0.99, 4),
    ([1.0, 1.0, 1.0, 1.0], 0.75, 3),         # exactly on the boundary: 3/4 of the energy is enough
    ([1.0, 1.0, 1.0, 1.0], 0.7501, 4),
    ([5.0, 0.0, 0.0], 1.0, 1),               # a rank-1 matrix at e = 1
    ([2.0] * 5 + [1e-9] * 5, 0.999999, 5),   # numerically rank 5
])
def test_energy_rule_on_constructed_spectra(sigma, energy, expected):
    s = torch.tensor(sigma, dtype=torch.float64)
    assert select_rank(s, "energy", energy) == expected
    # the same rule as the effective-filter analysis (λ = σ²)
    assert select_rank(s, "energy", energy) == effective_rank(s.square(), "energy", energy)
    # and on a real matrix with that spectrum, through the conv reshaping
    m = _with_spectrum(sigma, 10, 12)
    w = from_matrix(m, "channel", (10, 12, 1, 1))
    assert select_rank(singular_values(w, "channel"), "energy", energy) == expected


@pytest.mark.parametrize("threshold,expected", [(0.05, 3), (1.0, 2), (2.5, 1), (10.0, 0), (0.0, 4)])
def test_value_rule_keeps_sigma_at_least_threshold(threshold, expected):
    assert select_rank(torch.tensor([3.0, 1.0, 0.05, 0.01]), "value", threshold) == expected


@pytest.mark.parametrize("rule,threshold", [("energy", 0.0), ("energy", 1.5), ("value", -1.0), ("nosuch", 0.5),
                                            ("energy", float("nan"))])
def test_bad_rules_are_config_errors(rule, threshold):
    with pytest.raises(ConfigError):
        select_rank(torch.ones(3), rule, threshold)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_reshapes_round_trip_and_spatial_is_the_transposed_nk_by_ck_matrix(scheme):
    w = torch.randn(5, 3, 3, 2)
    m = to_matrix(w, scheme)
    assert m.shape == ((5, 18) if scheme == "channel" else (9, 10))
    assert torch.equal(from_matrix(m, scheme, w.shape), w)
    if scheme == "spatial":  # rows (n, j), columns (c, i): the n·kw × c·kh form of the issue
        nk_ck = w.permute(0, 3, 1, 2).reshape(5 * 2, 3 * 3)
        assert torch.equal(m, nk_ck.T)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("energy", [0.5, 0.8, 0.9, 0.99])
def test_projection_rank_energy_and_idempotence(scheme, energy):
    torch.manual_seed(1)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64) * torch.linspace(2, 0.1, 8, dtype=torch.float64)[:, None, None, None]
    sigma = singular_values(w, scheme)
    p = project(w, scheme, "energy", energy)
    assert p.rank == select_rank(sigma, "energy", energy)
    assert p.full_rank == min(to_matrix(w, scheme).shape)
    # the rank is exactly r
    assert torch.linalg.matrix_rank(to_matrix(p.weight, scheme)) == p.rank
    # the reported energy is the energy the projection keeps, it reaches e and one component fewer would not
    kept = float(p.weight.square().sum() / w.square().sum())
    assert kept == pytest.approx(p.energy, rel=1e-10)
    assert p.energy >= energy - 1e-12
    assert p.rank == 1 or energy_kept(sigma, p.rank - 1) < energy
    # idempotent at the same rank
    again = project(p.weight, scheme, rank=p.rank)
    assert torch.allclose(again.weight, p.weight, atol=1e-12)
    assert again.energy == pytest.approx(1.0)


def test_truncated_and_full_subgradients():
    m = _with_spectrum([4.0, 3.0, 2.0, 1.0], 6, 9, seed=3)
    w = from_matrix(m, "channel", (6, 9, 1, 1))
    p = project(w, "channel", rank=2, subgrad="truncated")
    g = to_matrix(p.subgradient, "channel")
    assert torch.linalg.svdvals(g)[:3].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-10)
    full = to_matrix(project(w, "channel", rank=2, subgrad="full").subgradient, "channel")
    assert torch.linalg.svdvals(full)[:5].tolist() == pytest.approx([1, 1, 1, 1, 0], abs=1e-10)
    # ⟨UVᵀ, M⟩ = ‖M‖_*
    assert float((full * m).sum()) == pytest.approx(10.0)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_nuclear_subgradient_matches_finite_difference(scheme):
    """With distinct nonzero σ, d‖𝒯(W)‖_*/dε along D equals ⟨𝒯⁻¹(UVᵀ), D⟩ (methods.md §8, Verify 2)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    d = torch.randn(w.shape, generator=g, dtype=torch.float64)
    sub = nuclear_subgradient(w, scheme)
    nuc = lambda x: float(torch.linalg.matrix_norm(to_matrix(x, scheme), ord="nuc"))  # noqa: E731
    eps = 1e-6
    fd = (nuc(w + eps * d) - nuc(w - eps * d)) / (2 * eps)
    assert fd == pytest.approx(float((sub * d).sum()), rel=1e-6)
    # and it differs from a wrong direction (the test can fail)
    assert abs(fd - float((sub * d.flip(0)).sum())) > 1e-3


def test_non_finite_weight_is_a_config_error():
    w = torch.randn(4, 2, 3, 3)
    w[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        project(w, "channel")
