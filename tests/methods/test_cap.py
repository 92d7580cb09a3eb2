"""CaP (methods.md §4): compensation-aware greedy ranking, binary structural search, every zoo model."""
import copy

import pytest
import torch

import chanprune
from chanprune.errors import ConfigError
from chanprune.graph import PruningGraph
from chanprune.methods.cap import CaPConfig, Problem, block_inverse_update, greedy_rank
from chanprune.recovery import Moments, closed_form_loss
from chanprune.recovery.compensation import clean_cov
from tests.conftest import calib, tiny

torch.set_num_threads(1)


def _conv_problem(c=6, k2=4, n=5, seed=0, duplicate=None):
    """A consumer with c input channels of k² coordinates each, moments from explicit rows."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2000, c * k2, generator=g, dtype=torch.float64) @ torch.randn(c * k2, c * k2, generator=g, dtype=torch.float64) / 4 + 0.3
    if duplicate is not None:
        src, dst = duplicate
        X[:, dst * k2:(dst + 1) * k2] = X[:, src * k2:(src + 1) * k2]
    W = torch.randn(n, c * k2, generator=g, dtype=torch.float64)
    m = Moments.from_rows(X)
    blocks = [torch.arange(j * k2, (j + 1) * k2) for j in range(c)]
    return W, m, blocks, X


def _cols(blocks, chans):
    return torch.cat([blocks[j] for j in chans]) if chans else torch.zeros(0, dtype=torch.long)


@pytest.mark.parametrize("k2", [1, 4])
def test_prefix_losses_and_monotone(k2):
    """Verify 5: for every greedy prefix S_k, tr(WΣ̃Wᵀ) − L(S_k) = Σ_{j≤k} Δ_j, and L never increases."""
    W, m, blocks, _ = _conv_problem(k2=k2)
    rank = greedy_rank([Problem(W, clean_cov(m), blocks)], len(blocks), ridge=0.0)
    assert sorted(rank.order) == list(range(len(blocks)))
    total = float(torch.einsum("nd,de,ne->", W, m.cov, W))
    assert rank.total == pytest.approx(total, rel=1e-12)
    previous = total
    for k in range(1, len(blocks) + 1):
        loss = closed_form_loss(W, m, _cols(blocks, rank.order[:k]))
        assert total - loss == pytest.approx(sum(rank.deltas[:k]), rel=1e-8, abs=1e-9 * total)
        assert rank.loss(k) == pytest.approx(loss, rel=1e-8, abs=1e-9 * total)
        assert loss <= previous + 1e-9 * total
        previous = loss
    assert all(d >= 0 for d in rank.deltas)


def test_q_block_update_matches_a_direct_inverse():
    """Verify 6: Q grown by block inversion equals (Σ̃_SS + λI)⁻¹ (relative error < 1e-8)."""
    W, m, blocks, _ = _conv_problem(c=7, k2=3, seed=4)
    fixed = torch.tensor([21, 22])  # a consumer reading other channels too: they stay in S from the start
    cov = clean_cov(m.__class__(m.mu[:21].clone(), m.sigma[:21, :21].clone(), m.count))
    cov = torch.block_diag(cov, torch.eye(2, dtype=torch.float64)) + 0.01
    W = torch.cat([W, torch.randn(W.shape[0], 2, dtype=torch.float64)], 1)
    for ridge in (0.0, 1e-3):
        rank = greedy_rank([Problem(W, cov, blocks, fixed)], len(blocks), ridge=ridge, track_q=True)
        q, cols = rank.q[0], rank.q_cols[0]
        lam = ridge * float(torch.diagonal(cov).mean())
        direct = torch.linalg.inv(cov[cols][:, cols] + lam * torch.eye(len(cols), dtype=torch.float64))
        assert float((q - direct).norm() / direct.norm()) < 1e-8
    # the explicit formula on one step
    Q = torch.linalg.inv(cov[:4, :4])
    t = torch.tensor([4, 5])
    T_inv = torch.linalg.inv(cov[4:6, 4:6] - cov[4:6, :4] @ Q @ cov[:4, 4:6])
    grown = block_inverse_update(Q, cov[:4][:, t], T_inv)
    assert torch.allclose(grown, torch.linalg.inv(cov[:6, :6]), rtol=1e-9, atol=1e-9)


def test_duplicate_channel_ranks_last():
    """Verify 7: a duplicate gets Δ = 0 once its twin is in S, ranks last, and pruning it gives L = 0."""
    W, m, blocks, _ = _conv_problem(c=6, k2=4, seed=2, duplicate=(1, 4))
    for ridge in (1e-10, 1e-3):  # a ridge regularises the refit: the twin then still helps a little (≲ ridge)
        rank = greedy_rank([Problem(W, clean_cov(m), blocks)], 6, ridge=ridge)
        assert rank.order[-1] in (1, 4) and rank.deltas[-1] <= max(1e-8, ridge) * rank.total
    loss = closed_form_loss(W, m, _cols(blocks, [0, 1, 2, 3, 5]), ridge=1e-10)
    assert abs(loss) < 1e-6 * rank.total


def test_several_consumers_sum_their_losses():
    W1, m1, blocks, _ = _conv_problem(seed=5)
    W2, m2, _, _ = _conv_problem(seed=6)
    both = greedy_rank([Problem(W1, clean_cov(m1), blocks), Problem(W2, clean_cov(m2), blocks)], 6, ridge=0.0)
    for k in range(7):
        keep = _cols(blocks, both.order[:k])
        assert both.loss(k) == pytest.approx(closed_form_loss(W1, m1, keep) + closed_form_loss(W2, m2, keep), rel=1e-8, abs=1e-8)


def test_cap_prunes_every_zoo_model_to_the_target(zoo_name):
    model = tiny(zoo_name)
    x, y = calib(8)
    pruned = chanprune.prune(model, CaPConfig(target_macs=0.5, calibration=8), data=(x, y), example_inputs=x[:1])
    record = pruned.chanprune_history[-1]
    assert record["verified"] and record["method"] == "cap"
    assert abs(record["macs"]["kept"] - 0.5) <= 0.01 * 0.5, record["macs"]
    assert torch.isfinite(pruned(x)).all()
    assert record["compensation"]["consumers"]
    assert all(0 <= v <= 1 + 1e-9 for v in record["cap"]["relative_loss"].values())


def test_cap_reconstructs_better_than_plain_removal():
    model = tiny("resnet20")
    x, y = calib(32)
    xt, _ = calib(16, seed=4)
    cap = chanprune.prune(model, CaPConfig(target_macs=0.5, calibration=32), data=(x, y), example_inputs=x[:1])
    l1 = chanprune.prune(model, chanprune.L1Config(target_macs=0.5), data=(x, y), example_inputs=x[:1])
    with torch.no_grad():
        ref = model(xt)
        assert float((cap(xt) - ref).norm()) < 0.5 * float((l1(xt) - ref).norm())


def test_binary_search_with_rounds_and_other_targets():
    model = tiny("lenet5")
    x, y = calib(8)
    rounds = chanprune.prune(model, CaPConfig(target_macs=0.5, calibration=8, rounds=3, delta=0.1),
                             data=(x, y), example_inputs=x[:1])
    record = rounds.chanprune_history[-1]
    assert record["cap"]["rounds"] >= 3 and abs(record["macs"]["kept"] - 0.5) <= 0.005
    params = chanprune.prune(model, CaPConfig(target_params=0.5, calibration=8), data=(x, y), example_inputs=x[:1])
    assert abs(params.chanprune_history[-1]["params"]["kept"] - 0.5) <= 0.005
    ratio = chanprune.prune(model, CaPConfig(ratio=0.3, calibration=8), data=(x, y), example_inputs=x[:1])
    groups = ratio.chanprune_history[-1]["groups"]
    removed = sum(g["channels"] - g["kept"] for g in groups) / sum(g["channels"] for g in groups)
    assert abs(removed - 0.3) < 0.05
    # the step constraint keeps the δ-grid: with one round every kept count sits on its group's grid
    one = chanprune.prune(tiny("vgg16_bn"), CaPConfig(target_macs=0.5, calibration=8, delta=0.25, tolerance=0.2),
                          data=(x, y), example_inputs=x[:1])
    for g in one.chanprune_history[-1]["groups"]:
        grid = {g["channels"] - int(g["channels"] * i * 0.25 + 1e-9) for i in range(4)}
        assert g["kept"] in grid or g["kept"] == g["channels"]


def test_residual_groups_only_when_asked():
    model = tiny("resnet20")
    x, y = calib(8)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    residual = {g.name for g in graph.groups if len(g.producers) > 1}
    inner = chanprune.prune(model, CaPConfig(target_macs=0.5, calibration=8), data=(x, y), example_inputs=x[:1])
    assert all(g["kept"] == g["channels"] for g in inner.chanprune_history[-1]["groups"] if g["name"] in residual)
    both = chanprune.prune(model, CaPConfig(target_macs=0.5, calibration=8, residual=True), data=(x, y),
                           example_inputs=x[:1])
    assert any(g["kept"] < g["channels"] for g in both.chanprune_history[-1]["groups"] if g["name"] in residual)


def test_cap_config_is_checked():
    with pytest.raises(ConfigError, match="delta"):
        CaPConfig(delta=0)
    with pytest.raises(ConfigError, match="rounds"):
        CaPConfig(rounds=0)
    with pytest.raises(ConfigError, match="sampling_stride"):
        CaPConfig(sampling_stride=0)
