"""Closed-form compensation (methods.md §4) and its two forms: moments and sampled rows (§3 step ii)."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

import chanprune
from chanprune.methods import PruneSession
from chanprune.methods.criterion import criterion_planner
from chanprune.criteria import L1Config
from chanprune.graph import PruningGraph
from chanprune.recovery import (
    Moments, apply_compensation, closed_form_loss, compensate, compensate_model, consumer_moments,
    expected_loss, lstsq_refit, patches,
)
from chanprune.surgery import mask_hooks, mask_sites, prune_copy
from tests.conftest import calib, tiny

torch.set_num_threads(1)


def _rows(m=400, d=12, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank or d, d, generator=g, dtype=torch.float64)
    return torch.randn(m, rank or d, generator=g, dtype=torch.float64) @ mix + 0.5


def _problem(seed=0, n=5, d=12):
    g = torch.Generator().manual_seed(seed + 100)
    X = _rows(400, d, seed)
    return X, torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


def test_loss_equals_closed_form_and_empirical_loss():
    """Verify 1: in float64 on the same data, the empirical loss equals L(S) = tr WΣ̃Wᵀ − tr BᵀΣ̃_SS⁻¹B."""
    X, W, b = _problem()
    keep = [0, 2, 3, 5, 7, 8, 11]
    m = Moments.from_rows(X)
    c = compensate(W, b, m, keep, ridge=0)
    empirical = ((X @ W.T + b - X[:, keep] @ c.weight.T - c.bias) ** 2).sum(1).mean()
    assert c.loss == pytest.approx(float(empirical), rel=1e-9)
    assert c.loss == pytest.approx(closed_form_loss(W, m, keep), rel=1e-9)
    dropped = X[:, [1, 4, 6, 9, 10]] @ W[:, [1, 4, 6, 9, 10]].T
    assert c.loss_uncompensated == pytest.approx(float((dropped**2).sum(1).mean()), rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), keep=st.sets(st.integers(0, 11), min_size=0, max_size=11))
def test_compensation_never_worse(seed, keep):
    """Verify 2: L(S) ≤ tr(W_PΣ̃_PPW_Pᵀ) (bias only) ≤ tr(W_PΣ_PPW_Pᵀ) (nothing)."""
    X, W, b = _problem(seed)
    m = Moments.from_rows(X)
    keep = sorted(keep)
    drop = [i for i in range(12) if i not in keep]
    c = compensate(W, b, m, keep, ridge=0)
    bias_only = float(torch.einsum("nd,de,ne->", W[:, drop], m.cov[drop][:, drop], W[:, drop])) if drop else 0.0
    tol = 1e-9 * (1 + c.loss_uncompensated)
    assert c.loss <= bias_only + tol
    assert bias_only <= c.loss_uncompensated + tol


@pytest.mark.parametrize("rescale", [False, True])
def test_means_match_and_rescale_matches_variances(rescale):
    """Verify 3 and 4: E[W′x_S + b′] = E[Wx + b]; rescale matches each output's variance at a loss ≥ L(S)."""
    X, W, b = _problem(3)
    m = Moments.from_rows(X)
    keep = [1, 2, 4, 6, 9]
    c = compensate(W, b, m, keep, ridge=0, rescale=rescale)
    y, y_new = X @ W.T + b, X[:, keep] @ c.weight.T + c.bias
    assert torch.allclose(y.mean(0), y_new.mean(0), atol=1e-9)
    if rescale:
        assert torch.allclose(y.var(0), y_new.var(0), rtol=1e-9)
        assert c.loss >= closed_form_loss(W, m, keep) - 1e-9
        assert c.loss == pytest.approx(expected_loss(W, b, c.weight, c.bias, m, keep), rel=1e-9)


def test_lstsq_equals_covariance_form():
    """§3 Verify 5 / §4 Verify 8: on the same rows the least-squares refit equals the closed form."""
    X, W, b = _problem(7)
    Y = X @ W.T + b
    keep = [0, 1, 3, 4, 8, 10]
    c = compensate(W, b, Moments.from_rows(X), keep, ridge=0)
    w2, b2 = lstsq_refit(X, Y, keep)
    assert torch.allclose(c.weight, w2, atol=1e-9) and torch.allclose(c.bias, b2, atol=1e-9)
    # with a ridge both still agree (the same λ = ridge·tr(Σ̃)/D)
    c = compensate(W, b, Moments.from_rows(X), keep, ridge=1e-2)
    w3, b3 = lstsq_refit(X, Y, keep, ridge=1e-2)
    assert torch.allclose(c.weight, w3, atol=1e-9) and torch.allclose(c.bias, b3, atol=1e-9)
    assert not torch.allclose(w3, w2, atol=1e-4)


def test_lstsq_identity_duplicate_and_residual():
    """§3 Verify 1–3: S = all returns (W, b); a duplicated column moves its weight to the twin; the
    refit's residual is never above the residual of dropping P and keeping W_S."""
    X, W, b = _problem(11)
    Y = X @ W.T + b
    w_all, b_all = lstsq_refit(X, Y, list(range(12)))
    assert torch.allclose(w_all, W, atol=1e-9) and torch.allclose(b_all, b, atol=1e-9)
    Xd = X.clone()
    Xd[:, 5] = Xd[:, 2]
    Yd = Xd @ W.T + b
    keep = [i for i in range(12) if i != 5]
    w, bb = lstsq_refit(Xd, Yd, keep)
    assert float((Yd - Xd[:, keep] @ w.T - bb).abs().max()) < 1e-9
    assert torch.allclose(w[:, keep.index(2)], W[:, 2] + W[:, 5], atol=1e-9)
    keep = [0, 3, 4, 9]
    w, bb = lstsq_refit(X, Y, keep)
    refit = ((Y - X[:, keep] @ w.T - bb) ** 2).sum()
    dropped = ((Y - X[:, keep] @ W[:, keep].T - b) ** 2).sum()
    assert refit <= dropped


def test_moments_are_im2col_moments_with_stride():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5)).eval()
    x = torch.randn(6, 2, 8, 8)
    batches = [(x[:4], None), (x[4:], None)]
    for stride in (1, 2):
        got = consumer_moments(model, ["1", "3"], batches, stride=stride)
        with torch.no_grad():
            h = model[0](x)
        rows = patches(model[1], h, stride).reshape(-1, 27)
        want = Moments.from_rows(rows)
        assert got["1"].count == rows.shape[0] == 6 * (4 // stride) ** 2
        assert torch.allclose(got["1"].mu, want.mu, atol=1e-6) and torch.allclose(got["1"].sigma, want.sigma, atol=1e-5)
        # the im2col layout is the weight's: conv(x) = rows @ W.reshape(n, -1)ᵀ + b
        with torch.no_grad():
            out = model[1](h)
            full = patches(model[1], h) @ model[1].weight.reshape(4, -1).T + model[1].bias
        assert torch.allclose(full.transpose(1, 2).reshape(6, 4, 4, 4), out, atol=1e-5)
        assert got["3"].count == 6 and got["3"].mu.shape == (64,)


def _duplicate_model(seed=0):
    """conv(1→6) + BN + ReLU, then a bias-free conv(6→5) + BN: input channel 5 duplicates channel 2."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 3, padding=1, bias=False), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3),
    ).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        model[0].weight[5] = model[0].weight[2]
        model[0].bias[5] = model[0].bias[2]
        for name in ("running_mean", "running_var", "weight", "bias"):
            getattr(model[1], name)[5] = getattr(model[1], name)[2]
    return model


def test_duplicate_channel_is_restored():
    """A channel that duplicates another carries nothing new: compensation restores the outputs."""
    model = _duplicate_model()
    x, _ = calib(16, size=8)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    gi = next(g.index for g in graph.groups if g.name == "0")
    plain, _ = prune_copy(model, {gi: [5]}, x[:1])
    fixed, _ = prune_copy(model, {gi: [5]}, x[:1])
    report = apply_compensation(model, fixed, graph, {gi: [5]}, [(x, None)], ridge=1e-12)
    assert report["consumers"]["3"]["bias"] == "running_mean of 4"  # bias-free conv → its BatchNorm
    assert fixed[3].bias is None
    xt, _ = calib(8, size=8, seed=5)
    with torch.no_grad():
        ref, got, before = model(xt), fixed(xt), plain(xt)
    assert float((got - ref).norm() / ref.norm()) < 1e-4
    assert float((before - ref).norm() / ref.norm()) > 1e-2


def test_bias_folded_into_batchnorm_equals_a_bias():
    """BN(y + b′) with running_mean − b′: the folded model equals one that keeps b′ as a conv bias."""
    model = _duplicate_model(1)
    with torch.no_grad():
        model[0].weight[5] += 0.3 * torch.randn_like(model[0].weight[5])  # no longer a duplicate
    x, _ = calib(16, size=8)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    gi = next(g.index for g in graph.groups if g.name == "0")
    plan = {gi: [0, 5]}
    folded, _ = prune_copy(model, plan, x[:1])
    apply_compensation(model, folded, graph, plan, [(x, None)])
    with_bias = copy.deepcopy(model)
    with_bias[3].bias = torch.nn.Parameter(torch.zeros(5))
    graph_b = PruningGraph(copy.deepcopy(with_bias), x[:1])
    biased, _ = prune_copy(with_bias, plan, x[:1])
    report = apply_compensation(with_bias, biased, graph_b, plan, [(x, None)])
    assert report["consumers"]["3"]["bias"] == "bias"
    with torch.no_grad():
        assert torch.allclose(folded(x), biased(x), atol=1e-5)
        assert not torch.allclose(folded[4].running_mean, with_bias[4].running_mean[torch.arange(5)])


@pytest.mark.parametrize("name", ["densenet40", "resnet20", "mobilenetv2"])
def test_pruned_model_equals_masked_stand_in(name):
    """Writing W′ into the pruned layers (slices, BN folds through concatenations) gives exactly the
    function of the full-size masked model with W′ in the kept columns."""
    model = tiny(name).double()
    x, y = calib(8)
    x = x.double()
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    gen = torch.Generator().manual_seed(0)
    plan = {g.index: sorted(torch.randperm(g.channels, generator=gen)[: g.channels // 3].tolist())
            for g in graph.groups if g.channels >= 3}
    pruned, _ = prune_copy(model, plan, x[:1])
    report = apply_compensation(model, pruned, graph, plan, [(x, y)])
    stand_in = copy.deepcopy(model)
    compensate_model(model, stand_in, graph, plan, [(x, y)], full=True)
    handles = mask_hooks(stand_in, mask_sites(graph, plan))
    with torch.no_grad():
        a, b = stand_in(x), pruned(x)
    for h in handles:
        h.remove()
    assert float((a - b).abs().max() / a.abs().max()) < 1e-9
    assert report["consumers"] and not report["skipped"]


def test_residual_groups_can_be_skipped():
    model = tiny("resnet20")
    x, y = calib(8)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    res = next(g for g in graph.groups if len(g.producers) > 1)
    plan = {res.index: [0, 1]}
    pruned, _ = prune_copy(model, plan, x[:1])
    report = apply_compensation(model, pruned, graph, plan, [(x, y)], residual=False)
    assert not report["consumers"] and report["skipped"][0]["name"] == res.name
    report = apply_compensation(model, pruned, graph, plan, [(x, y)])
    assert set(report["consumers"]) == {c.name for c in res.consumers}


def test_recover_compensate_after_l1():
    """recover="compensate" lowers a consumer's reconstruction error and the output error."""
    model = tiny("vgg16_bn")
    x, y = calib(32)
    config = L1Config(target_macs=0.5, calibration=32)
    plain = chanprune.prune(model, config, data=(x, y), example_inputs=x[:1])
    fixed = chanprune.prune(model, L1Config(target_macs=0.5, calibration=32, recover="compensate"),
                            data=(x, y), example_inputs=x[:1])
    record = fixed.chanprune_history[-1]
    assert record["verified"] and record["config"]["recover"] == "compensate"
    assert abs(record["macs"]["kept"] - 0.5) <= 0.005
    # the first consumer (features.3) reads the first pruned group; upstream is unchanged
    session = PruneSession(model, config, (x, y), x[:1])
    plan = criterion_planner(session)
    first = next(g for g in session.graph.groups if g.name == "features.0")
    consumer = first.consumers[0].name
    rows = [r for r in range(dict(model.named_modules())[consumer].out_channels)
            if r not in {i for g, rem in plan.items() for m in session.graph.groups[g].producers
                         if m.name == consumer for i, ri in zip(m.idxs, m.root_idxs) if ri in rem}]
    outs = {}

    def grab(tag):
        return lambda _m, _i, o: outs.__setitem__(tag, o.detach())

    xt, _ = calib(16, seed=3)
    for tag, net in (("orig", model), ("plain", plain), ("fixed", fixed)):
        h = dict(net.named_modules())[consumer].register_forward_hook(grab(tag))
        with torch.no_grad():
            outs[tag + "_y"] = net(xt)
        h.remove()
    err = {t: float((outs[t] - outs["orig"][:, rows]).norm()) for t in ("plain", "fixed")}
    assert err["fixed"] < 0.8 * err["plain"]
    out_err = {t: float((outs[t + "_y"] - outs["orig_y"]).norm()) for t in ("plain", "fixed")}
    assert out_err["fixed"] < out_err["plain"]
    assert record["compensation"]["consumers"][consumer]["loss"] < record["compensation"]["consumers"][consumer]["loss_uncompensated"]


def test_compensate_needs_data():
    model = tiny("lenet5")
    x, _ = calib(2)
    with pytest.raises(chanprune.ChanpruneError, match="calibration"):
        chanprune.prune(model, L1Config(ratio=0.5, recover="compensate"), data=None, example_inputs=x[:1])


def test_compensate_then_bn_refits_and_re_estimates_batchnorm():
    """recover="compensate+bn": the consumers get the refit of recover="compensate", then BatchNorm statistics
    are re-estimated on training images (so they differ from the compensate-only model's)."""
    data = chanprune.load_data("digits")
    model = tiny("resnet20")
    comp = chanprune.prune(model, L1Config(target_macs=0.5, calibration=64, recover="compensate"), data=data)
    both = chanprune.prune(model, L1Config(target_macs=0.5, calibration=64, recover="compensate+bn"), data=data)
    record = both.chanprune_history[-1]
    assert record["compensation"]["consumers"] == comp.chanprune_history[-1]["compensation"]["consumers"]
    bn = [n for n, m in both.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means = lambda net: torch.cat([dict(net.named_modules())[n].running_mean for n in bn])  # noqa: E731
    assert not torch.allclose(means(both), means(comp))


def test_bn_recovery_without_a_data_bundle_is_refused_before_any_work():
    model = tiny("lenet5")
    x, y = calib(8)
    for recover in ("bn", "compensate+bn"):  # shuffled training batches (recover_batches=N) need a bundle
        with pytest.raises(chanprune.ChanpruneError, match="DataBundle"):
            chanprune.prune(model, L1Config(ratio=0.5, recover=recover, recover_batches=2), data=(x, y), example_inputs=x[:1])
