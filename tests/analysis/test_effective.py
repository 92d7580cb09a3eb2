"""Effective-filter analysis on planted redundancy (methods.md §1 'Verify'), and its numerical rules."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from chanprune.analysis import AnalysisConfig, analyze, collect_gate_gradients, effective_rank, spectrum
from chanprune.errors import AnalysisError
from chanprune.graph import PruningGraph

N_BASE = 6


def base_net(n=N_BASE, act=True, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, n, 3, padding=1), nn.BatchNorm2d(n)]
    if act:
        layers.append(nn.ReLU())
    layers += [nn.Conv2d(n, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)]
    net = nn.Sequential(*layers).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
    return net


def consumer_index(net):
    return 3 if isinstance(net[2], nn.ReLU) else 2


def widen(net, source: int, split: float | None):
    """Append a copy of filter `source` (weights and BN); outgoing weights split a:(1−a) or drawn at random."""
    n = net[0].out_channels
    ci = consumer_index(net)
    new = copy.deepcopy(net)
    conv, bn, cons = nn.Conv2d(1, n + 1, 3, padding=1), nn.BatchNorm2d(n + 1), nn.Conv2d(n + 1, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight[:n], conv.bias[:n] = net[0].weight, net[0].bias
        conv.weight[n], conv.bias[n] = net[0].weight[source], net[0].bias[source]
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(bn, name)
            t[:n] = getattr(net[1], name)
            t[n] = getattr(net[1], name)[source]
        cons.weight[:, :n], cons.bias[:] = net[ci].weight, net[ci].bias
        if split is None:
            cons.weight[:, n] = torch.randn_like(cons.weight[:, n])
        else:
            cons.weight[:, source] = split * net[ci].weight[:, source]
            cons.weight[:, n] = (1 - split) * net[ci].weight[:, source]
    new[0], new[1], new[ci] = conv, bn, cons
    return new.eval()


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def k_of(net, reading, n=48):
    x, y = data(n)
    res = analyze(net, (x, y), AnalysisConfig(reading=reading, rule="exact", calibration=n, batch_size=16))
    return first(res.groups).effective, res


def first(groups):
    """The group rooted at the first conv (module '0'), whatever the trace order."""
    return next(g for g in groups if g.name == "0")


@pytest.mark.parametrize("reading", ["gate", "consumer_weight", "producer_weight", "feature"])
def test_split_copy_keeps_rank(reading):
    """Verify 1: a copy with outgoing weights split a:(1−a) changes no output and no effective rank."""
    net = base_net()
    wide = widen(net, source=2, split=0.3)
    x, _ = data(8)
    assert torch.allclose(net(x), wide(x), atol=1e-5)
    k0, _ = k_of(net, reading)
    k1, res = k_of(wide, reading)
    assert first(res.groups).channels == N_BASE + 1
    assert k0 == N_BASE and k1 == k0


@pytest.mark.parametrize("reading,extra", [("gate", 1), ("consumer_weight", 0), ("feature", 0)])
def test_independent_copy(reading, extra):
    """Verify 3: a copy with random outgoing weights: invisible to feature/consumer_weight, +1 under gate."""
    wide = widen(base_net(), source=1, split=None)
    k, _ = k_of(wide, reading)
    assert k == N_BASE + extra


@pytest.mark.parametrize("reading", ["gate", "consumer_weight", "producer_weight", "feature"])
def test_dead_filter_is_a_zero_column(reading):
    """Verify 2: zero weights and BN shift β ≤ 0 (so A_f ≡ 0 after ReLU) give a zero column."""
    net = base_net()
    with torch.no_grad():
        net[0].weight[4] = 0
        net[0].bias[4] = 0
        net[1].running_mean[4] = 0
        net[1].bias[4] = -0.5
    k, res = k_of(net, reading)
    assert k == N_BASE - 1
    x, y = data(48)
    graph = PruningGraph(net, x[:1])
    stats = collect_gate_gradients(net, graph, [(x, y)])
    assert stats[first(graph.groups).index].gram[4].abs().max() == 0


def test_linear_combination_is_seen_by_feature_reading():
    """A filter whose (pre-activation) map is the sum of two others: feature rank unchanged, gate sees it."""
    net = base_net(act=False)
    n = N_BASE
    wide = widen(net, source=0, split=None)
    with torch.no_grad():
        wide[0].weight[n] = net[0].weight[0] + net[0].weight[1]
        wide[0].bias[n] = net[0].bias[0] + net[0].bias[1]
        wide[1].running_mean[n] = net[1].running_mean[0] + net[1].running_mean[1]
        wide[1].running_var[n] = wide[1].weight[n] = 1.0
        wide[1].bias[n] = 0.0
        for c in (0, 1):  # unit BN on the summed channels so the sum survives normalisation
            wide[1].running_var[c] = wide[1].weight[c] = 1.0
            wide[1].bias[c] = 0.0
    assert k_of(wide, "feature")[0] == n
    assert k_of(wide, "gate")[0] == n + 1


def test_batched_rows_equal_single_sample_passes():
    """Verify 4/5: eval-mode batched gate rows = per-sample ∂ℓ_i/∂g; rank(K) = rank(G)."""
    net = base_net()
    x, y = data(10)
    graph = PruningGraph(net, x[:1])
    gi = first(graph.groups).index
    stats = collect_gate_gradients(net, graph, [(x, y)], keep_rows=True)[gi]
    rows = []
    for i in range(len(x)):
        gate = torch.ones(N_BASE, requires_grad=True)
        h = net[1].register_forward_hook(lambda m, inp, out: out * gate.view(1, -1, 1, 1))
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1], reduction="sum")
        (g,) = torch.autograd.grad(loss, gate)
        h.remove()
        rows.append(g.double())
    explicit = torch.stack(rows)
    assert torch.allclose(stats.matrix, explicit, rtol=1e-5, atol=1e-8)
    assert torch.allclose(stats.gram, explicit.T @ explicit, rtol=1e-5, atol=1e-8)
    assert effective_rank(spectrum(stats.gram), "exact") == torch.linalg.matrix_rank(explicit).item()


def test_gram_accumulates_batch_by_batch():
    net = base_net()
    x, y = data(40)
    graph = PruningGraph(net, x[:1])
    gi = first(graph.groups).index
    one = collect_gate_gradients(net, graph, [(x, y)])[gi]
    many = collect_gate_gradients(net, graph, [(x[i : i + 7], y[i : i + 7]) for i in range(0, 40, 7)])[gi]
    assert many.n_samples == one.n_samples == 40
    # batched float32 convolutions round differently per batch size: equal to float32 precision
    assert torch.allclose(one.gram, many.gram, rtol=1e-5, atol=1e-12)
    halves = collect_gate_gradients(net, graph, [(x[:20], y[:20])])[gi]
    halves.merge(collect_gate_gradients(net, graph, [(x[20:], y[20:])])[gi])  # what an all-reduce does
    assert torch.allclose(one.gram, halves.gram, rtol=1e-5, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-12, 1e6), min_size=1, max_size=30), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_rank_rules_monotone(values, a, b):
    """Verify 6: raising τ or lowering η never increases k."""
    lam = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    lo, hi = min(a, b), max(a, b)
    assert effective_rank(lam, "energy", lo) <= effective_rank(lam, "energy", hi)
    assert effective_rank(lam, "rel", hi) <= effective_rank(lam, "rel", lo)
    assert 1 <= effective_rank(lam, "energy", lo) <= len(values)


def test_energy_rule_on_constructed_spectrum():
    lam = torch.tensor([50.0, 30.0, 15.0, 4.0, 1.0], dtype=torch.float64)  # cumulative 0.5 0.8 0.95 0.99 1.0
    assert [effective_rank(lam, "energy", e) for e in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)] == [1, 2, 3, 3, 4, 5]
    # σ = √λ ≈ [7.07, 5.48, 3.87, 2, 1]
    assert effective_rank(lam, "rel", 0.2) == 4 and effective_rank(lam, "abs", 2.0) == 3


def test_clear_errors():
    net = base_net()
    x, y = data(4)
    with pytest.raises(AnalysisError, match="at least 6 images"):
        analyze(net, (x, y), AnalysisConfig(reading="gate", calibration=4))
    with pytest.raises(AnalysisError, match="train mode"):
        analyze(net.train(), (x, y), AnalysisConfig(reading="gate", calibration=4))
    bad = base_net()
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    x, y = data(16)
    with pytest.raises(AnalysisError, match="NaN"):
        analyze(bad, (x, y), AnalysisConfig(reading="gate", calibration=16))


def test_curve_and_outputs(tmp_path):
    net = base_net()
    x, y = data(48)
    res = analyze(net, (x, y), AnalysisConfig(reading="gate", calibration=48))
    curve = res.curve([0.5, 0.9, 0.99, 0.999])
    rates = [r["max_compression_macs"] for r in curve]
    assert rates == sorted(rates, reverse=True)  # a stricter threshold allows less compression
    assert res.save_json(tmp_path / "a.json").exists()
    assert all(p.exists() and p.stat().st_size > 1000 for p in res.plot(tmp_path))
