"""CP (methods.md §3): LASSO channel selection with the penalty search, refit, every zoo model."""
import copy

import pytest
import torch

import chanprune
from chanprune.config import L1Config
from chanprune.graph import PruningGraph
from chanprune.methods.cp import CPConfig, LassoStats, lasso_select
from chanprune.recovery import is_residual
from chanprune.errors import ConfigError
from tests.conftest import calib, tiny

torch.set_num_threads(1)


def _design(rows=300, c=24, useful=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(rows, c, generator=g, dtype=torch.float64)
    beta = torch.zeros(c, dtype=torch.float64)
    beta[:useful] = torch.linspace(1.0, 3.0, useful, dtype=torch.float64)
    return Z, Z @ beta + 0.05 * torch.randn(rows, generator=g, dtype=torch.float64) + 2.0


@pytest.mark.parametrize("keep", [1, 3, 8, 12, 20])
def test_lasso_lands_on_the_channel_count(keep):
    """Verify 4: the bisection reaches c′ ≤ |S| ≤ 1.1c′ (or says it did not); |S| is then exactly c′."""
    Z, y = _design()
    sel = lasso_select(Z, y, keep=keep, tol=0.1)
    assert len(sel.selected) == keep == len(set(sel.selected))
    if sel.success:
        assert keep <= sel.lasso_count <= 1.1 * keep
    if keep <= 8:  # the true support is found first
        assert sel.success and set(sel.selected) <= set(range(8))


def test_lasso_reports_failure_on_dead_columns():
    Z, y = _design()
    Z[:, 4:] = 0.0  # only 4 live columns: no penalty keeps 6 of them
    sel = lasso_select(Z, y, keep=6)
    assert not sel.success and len(sel.selected) == 6 and set(range(4)) <= set(sel.selected)


def test_lasso_statistics_need_no_design_matrix():
    """Z_j = vec(X_jW_jᵀ)/‖W_j‖ assembled from X, W and Y equals the explicit design."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(50, 12, generator=g, dtype=torch.float64)
    W = torch.randn(5, 12, generator=g, dtype=torch.float64)
    Y = torch.randn(50, 5, generator=g, dtype=torch.float64)
    blocks = [torch.arange(3 * j, 3 * j + 3) for j in range(4)]
    Z = torch.stack([(X[:, b] @ W[:, b].T / W[:, b].norm()).reshape(-1) for b in blocks], 1)
    a, b = LassoStats.from_consumer(X, W, Y, blocks), LassoStats.from_design(Z, Y.reshape(-1))
    for got, want in zip(a.centred(), b.centred()):
        assert torch.allclose(torch.as_tensor(got), torch.as_tensor(want), atol=1e-9)


def test_cp_prunes_every_zoo_model_to_the_target(zoo_name):
    model = tiny(zoo_name)
    x, y = calib(8)
    pruned = chanprune.prune(model, CPConfig(target_macs=0.5, calibration=8), data=(x, y), example_inputs=x[:1])
    record = pruned.chanprune_history[-1]
    assert record["verified"] and record["method"] == "cp"
    assert abs(record["macs"]["ratio"] - 0.5) <= 0.01 * 0.5, record["macs"]
    assert pruned(x).shape == (8, 10) and torch.isfinite(pruned(x)).all()
    # residual streams stay whole: only groups with one (non-depthwise) producer lose channels
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    for g, kept in zip(graph.groups, record["groups"]):
        if is_residual(g):
            assert kept["kept"] == kept["channels"]
    assert record["cp"]["layers"]


def test_cp_reconstruction_beats_plain_removal():
    model = tiny("vgg16_bn")
    x, y = calib(32)
    xt, _ = calib(16, seed=2)
    cp = chanprune.prune(model, CPConfig(target_macs=0.5, calibration=32), data=(x, y), example_inputs=x[:1])
    l1 = chanprune.prune(model, L1Config(target_macs=0.5), data=(x, y), example_inputs=x[:1])
    with torch.no_grad():
        ref = model(xt)
        err_cp = float((cp(xt) - ref).norm() / ref.norm())
        err_l1 = float((l1(xt) - ref).norm() / ref.norm())
    assert err_cp < 0.25 * err_l1
    layers = cp.chanprune_history[-1]["cp"]["layers"]
    assert all(v["kept"] < v["channels"] for v in layers.values())


def _toy(seed, width=8):
    """Three conv + ReLU layers feeding a kept conv (index 6): CP prunes the three groups in turn."""
    torch.manual_seed(seed)
    layers = []
    for cin, cout in ((1, width), (width, width), (width, width)):
        layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(width, 6, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()


def test_source_x_pruned_absorbs_upstream_error():
    """Verify 6: sampling X from the network pruned so far gives a lower last-layer error."""
    for seed in range(3):
        model = _toy(seed)
        x, y = calib(32, size=8, seed=seed)
        errs = {}
        for source in ("pruned", "original"):
            cfg = CPConfig(ratio=0.5, calibration=32, source_X=source, ignored_layers=("6",))
            pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
            feats = {}
            hooks = [net[6].register_forward_hook(lambda _m, _i, o, k=k: feats.__setitem__(k, o))
                     for k, net in (("orig", model), ("pruned", pruned))]
            with torch.no_grad():
                model(x)
                pruned(x)
            for h in hooks:
                h.remove()
            errs[source] = float((feats["pruned"] - feats["orig"]).norm())
        assert errs["pruned"] < errs["original"], (seed, errs)


def test_cp_config_is_checked():
    with pytest.raises(ConfigError, match="source_X"):
        CPConfig(source_X="both")
    with pytest.raises(ConfigError, match="points_per_image"):
        CPConfig(points_per_image=0)
    with pytest.raises(ConfigError, match="allocation"):
        CPConfig(allocation="global")
