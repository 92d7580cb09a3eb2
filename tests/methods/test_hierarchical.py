"""Hierarchical pruning (methods.md §2 'Verify'): floors respected, targets met, planted copies removed."""
import pytest
import torch

import chanprune
from chanprune.analysis import AnalysisConfig, analyze
from chanprune.errors import OverPruneError
from chanprune.methods.hierarchical import HierarchicalConfig, pivoted_cholesky
from tests.analysis.test_effective import N_BASE, base_net, data, first, widen
from tests.conftest import calib, tiny

LOOSE = AnalysisConfig(reading="gate", rule="energy", threshold=0.95)


@pytest.mark.parametrize("allocation", ["proportional", "greedy"])
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "densenet40", "vgg16_bn"])
def test_floor_and_target(name, allocation):
    model = tiny(name)
    x, y = calib(96)
    # layers wider than the calibration set (MobileNetV2's 1280-channel head) are left out of the analysis
    wide = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 96)
    res = analyze(model, (x, y), AnalysisConfig(**{**LOOSE.__dict__, "calibration": 96, "ignored_layers": wide}))
    target = 1 - 0.5 * res.max_compression_macs  # half of what the analysis allows
    cfg = HierarchicalConfig(target_macs=target, allocation=allocation, calibration=96, analysis=LOOSE, ignored_layers=wide)
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    record = pruned.chanprune_history[-1]
    assert record["analysis"]["effective"] == res.effective
    for g, k in zip(record["groups"], res.effective):
        assert g["kept"] >= k
    assert abs(record["macs"]["kept"] - target) <= 0.01 * target
    assert record["verified"]


def test_at_max_rate_every_group_keeps_exactly_k():
    model = tiny("resnet20")
    x, y = calib(96)
    res = analyze(model, (x, y), AnalysisConfig(**{**LOOSE.__dict__, "calibration": 96}))
    kept = 1 - res.max_compression_macs
    cfg = HierarchicalConfig(target_macs=kept, calibration=96, analysis=LOOSE)
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    assert [g["kept"] for g in pruned.chanprune_history[-1]["groups"]] == res.effective


def test_over_target_is_refused_unless_allowed():
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1).eval()  # full width: fine-grained MACs
    x, y = calib(96)
    strict = AnalysisConfig(reading="gate", rule="energy", threshold=0.999, calibration=96)
    res = analyze(model, (x, y), strict)
    beyond = (1 - res.max_compression_macs) * 0.8
    cfg = dict(target_macs=beyond, calibration=96, analysis=strict)
    with pytest.raises(OverPruneError, match="allow_exceed=True"):
        chanprune.prune(model, HierarchicalConfig(**cfg), data=(x, y), example_inputs=x[:1])
    pruned = chanprune.prune(model, HierarchicalConfig(**cfg, allow_exceed=True), data=(x, y), example_inputs=x[:1])
    assert abs(pruned.chanprune_history[-1]["macs"]["kept"] - beyond) <= 0.01 * beyond


def test_duplicate_pairs_lose_exactly_one_each():
    """Verify 2: with m planted duplicate pairs, pruning m filters removes one filter of each pair,
    and merging the outgoing weights (the refit) restores the outputs."""
    net = base_net()
    wide = widen(widen(net, source=1, split=0.5), source=4, split=0.25)  # copies of 1 and 4 at indices 6, 7
    x, y = data(64)
    cfg = HierarchicalConfig(ratio=0.0, calibration=64, analysis=AnalysisConfig(reading="gate", rule="exact", calibration=64))
    res = analyze(wide, (x, y), cfg.analysis)
    assert first(res.groups).effective == N_BASE
    gi = first(res.groups).index
    order, residual = pivoted_cholesky(res.grams[gi])
    removed = sorted(order[N_BASE:])
    pairs = [{1, 6}, {4, 7}]
    assert all(len(p & set(removed)) == 1 for p in pairs)
    # refit: move each removed copy's outgoing weights onto its twin, then remove it
    merged = widen(widen(net, source=1, split=0.5), source=4, split=0.25)
    with torch.no_grad():
        for pair in pairs:
            (gone,) = pair & set(removed)
            (kept,) = pair - {gone}
            merged[3].weight[:, kept] += merged[3].weight[:, gone]
            merged[3].weight[:, gone] = 0
    from chanprune.graph import PruningGraph
    from chanprune.surgery import prune_copy

    graph = PruningGraph(merged, x[:1])
    pruned, _ = prune_copy(merged, {first(graph.groups).index: removed}, x[:1])
    rel = (pruned(x) - wide(x)).abs().max() / wide(x).abs().max()
    assert rel < 1e-4


def test_reanalysis_after_pruning_to_max_finds_no_redundancy():
    """Verify 4: prune the planted copies away, re-analyse: k_l = n'_l."""
    net = widen(base_net(), source=2, split=0.5)
    x, y = data(64)
    acfg = AnalysisConfig(reading="gate", rule="exact", calibration=64)
    res = analyze(net, (x, y), acfg)
    pruned = chanprune.prune(net, HierarchicalConfig(target_macs=1 - res.max_compression_macs, calibration=64, analysis=acfg),
                             data=(x, y), example_inputs=x[:1])
    again = analyze(pruned, (x, y), acfg)
    assert all(g.effective == g.channels for g in again.groups)


def test_pivoted_cholesky_puts_dependent_columns_last():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 5, generator=g, dtype=torch.float64)
    cols = torch.cat([base, 2 * base[:, :1], torch.zeros(30, 1, dtype=torch.float64), base[:, 1:2] + base[:, 2:3]], 1)
    order, residual = pivoted_cholesky(cols.T @ cols)
    assert sorted(order) == list(range(8))
    assert (residual[:5] > 1e-6).all() and (residual[5:].abs() < 1e-9).all()
    assert 6 in order[5:]  # the zero column is among the last


def test_iterative_mode_reaches_target_in_steps():
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1).eval()
    x, y = calib(96)
    cfg = HierarchicalConfig(target_macs=0.6, iterate=3, calibration=96, allow_exceed=True,
                             analysis=AnalysisConfig(reading="gate", rule="energy", threshold=0.99))
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    steps = [h for h in pruned.chanprune_history if "step" in h]
    assert 1 <= len(steps) <= 3
    total = 1.0
    for h in steps:
        total *= h["macs"]["kept"]
    assert abs(total - 0.6) <= 0.02 * 0.6
    with pytest.raises(chanprune.ChanpruneError, match="iterate > 1 needs"):
        HierarchicalConfig(ratio=0.3, iterate=2)


def test_groups_wider_than_the_samples_are_kept_whole():
    """Gate reading, N = 48 < 64 channels: those groups cannot show redundancy, so k_l = n_l and they are not cut."""
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1).eval()  # groups of 16, 32 and 64
    x, y = calib(48)
    gate = AnalysisConfig(reading="gate", rule="energy", threshold=0.9, calibration=48)
    with pytest.warns(UserWarning, match="calibration=64"):
        res = analyze(model, (x, y), gate)
    wide = [g.index for g in res.groups if g.channels > 48]
    assert wide and all(not g.resolved and g.effective == g.channels for g in res.groups if g.index in wide)
    assert all(g.resolved for g in res.groups if g.index not in wide)
    assert any(g.effective < g.channels for g in res.groups if g.index not in wide)
    target = 1 - 0.5 * res.max_compression_macs
    with pytest.warns(UserWarning, match="calibration=64"):
        pruned = chanprune.prune(model, HierarchicalConfig(target_macs=target, calibration=48, analysis=gate), data=(x, y),
                                 example_inputs=x[:1])
    groups = pruned.chanprune_history[-1]["groups"]
    assert all(groups[i]["kept"] == groups[i]["channels"] for i in wide)
    assert pruned.chanprune_history[-1]["analysis"]["unresolved"] == [g.name for g in res.groups if g.index in wide]
    assert abs(pruned.chanprune_history[-1]["macs"]["kept"] - target) <= 0.01 * target
