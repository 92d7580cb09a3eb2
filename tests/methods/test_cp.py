"""CP (methods.md §3): LASSO channel selection with the penalty search, refit, every zoo model."""
import copy

import pytest
import torch

import chanprune
from chanprune.criteria import L1Config
from chanprune.graph import PruningGraph
from chanprune.methods.cp import CPConfig
from chanprune.recovery.lasso import LassoStats, lasso_select
from chanprune.graph import is_residual
from chanprune.errors import ConfigError
from tests.conftest import calib, tiny

torch.set_num_threads(1)


def _design(rows=300, c=24, useful=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(rows, c, generator=g, dtype=torch.float64)
    beta = torch.zeros(c, dtype=torch.float64)
    beta[:useful] = torch.linspace(1.0, 3.0, useful, dtype=torch.float64)
    return Z, Z @ beta + 0.05 * torch.randn(rows, generator=g, dtype=torch.float64) + 2.0


@pytest.mark.parametrize("solver", ["lars", "cd"])
@pytest.mark.parametrize("keep", [1, 3, 8, 12, 20])
def test_lasso_lands_on_the_channel_count(keep, solver):
    """Verify 4: the search reaches c′ ≤ |S| ≤ 1.1c′ (or says it did not); |S| is then exactly c′. The exact
    path lands on c′ itself, and the LASSO solution there has exactly the selected support."""
    Z, y = _design()
    sel = lasso_select(Z, y, keep=keep, tol=0.1, solver=solver)
    assert len(sel.selected) == keep == len(set(sel.selected))
    if sel.success:
        assert keep <= sel.lasso_count <= 1.1 * keep
    if keep <= 8:  # the true support is found first
        assert sel.success and set(sel.selected) <= set(range(8))
    if solver == "lars":
        from sklearn.linear_model import Lasso

        assert sel.success and sel.lasso_count == keep
        Zc, yc = (Z - Z.mean(0)).numpy(), (y - y.mean()).numpy()
        coef = Lasso(alpha=sel.alpha, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(Zc, yc).coef_
        assert sorted(int(i) for i in (abs(coef) > 1e-8).nonzero()[0]) == sel.selected


@pytest.mark.parametrize("solver", ["lars", "cd"])
def test_lasso_reports_failure_on_dead_columns(solver):
    Z, y = _design()
    Z[:, 4:] = 0.0  # only 4 live columns: no penalty keeps 6 of them
    sel = lasso_select(Z, y, keep=6, solver=solver)
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
    assert abs(record["macs"]["kept"] - 0.5) <= 0.01 * 0.5, record["macs"]
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
    with pytest.raises(ConfigError, match="lasso_solver"):
        CPConfig(lasso_solver="newton")


# --------------------------------------------------------------------------- multi-branch (shortcut correction)


def _pre_relu(model, x, blocks):
    """{block: (pre-ReLU sum a⊙z + c + s, branch output a⊙z + c)} flattened to (N·L, C), at every position."""
    got, mods = {}, dict(model.named_modules())

    def flat(t):
        return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2).reshape(-1, t.shape[1]).double()

    hooks = []
    for b in blocks:
        hooks.append(mods[b + ".relu2"].register_forward_pre_hook(lambda _m, i, b=b: got.__setitem__((b, "sum"), flat(i[0]))))
        hooks.append(mods[b + ".bn2"].register_forward_hook(lambda _m, _i, o, b=b: got.__setitem__((b, "branch"), flat(o))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def test_shortcut_rows_are_the_addition_operand_at_the_sampled_positions():
    """a⊙(XWᵀ) + c + S equals the block's pre-ReLU sum at the positions consumer_rows samples."""
    from chanprune.methods.cp import branch_ends, shortcut_rows
    from chanprune.recovery import consumer_rows
    from chanprune.recovery.stats import sample_positions

    model = tiny("resnet20")
    x, y = calib(24)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    names = ["layer1.1.conv2", "layer2.0.conv2", "layer3.2.conv2", "layer2.0.conv1", "fc"]
    ends = branch_ends(PruningGraph(copy.deepcopy(model), x[:1]), names)
    assert sorted(ends) == ["layer1.1.conv2", "layer2.0.conv2", "layer3.2.conv2"]  # conv1 → ReLU, fc → output
    S = shortcut_rows(model, ends, batches, 5, 3)
    X = consumer_rows(model, list(ends), batches, 5, 3)
    mods = dict(model.named_modules())
    for n, end in ends.items():
        block = n.rsplit(".", 1)[0]
        want = []
        for bi, (xb, _) in enumerate(batches):
            v = _pre_relu(model, xb, [block])[(block, "sum")].reshape(len(xb), -1, S[n].shape[1])
            pos = sample_positions(n, 3, bi, v.shape[0], v.shape[1], 5)
            want.append(torch.gather(v, 1, pos[:, :, None].expand(-1, -1, v.shape[2])).reshape(-1, v.shape[2]))
        bn = mods[block + ".bn2"]
        z = X[n] @ mods[n].weight.detach().reshape(len(end.scale), -1).double().T
        c = bn.bias.detach().double() - end.scale * bn.running_mean.double()
        assert float((end.scale * z + c + S[n] - torch.cat(want)).abs().max()) < 1e-4


def test_shortcut_correction_minimises_the_block_error_on_the_calibration_rows():
    """With every position sampled and no ridge, the refit with the correction is the least-squares optimum of
    the block's sum a⊙z′ + c + s′ against the original sum: no refit of the same layer from the same inputs
    that aims at the branch output alone (no correction) gets a lower block error, and where the shortcut
    carries an error it gets a strictly higher one. A wrong sign or scale of the correction fails this."""
    model = tiny("resnet20")
    x, y = calib(24)
    cfg = CPConfig(ratio=0.5, calibration=24, ridge=0.0, points_per_image=144)
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    layers = pruned.chanprune_history[-1]["cp"]["layers"]
    blocks = ["layer1.1", "layer1.2", "layer2.1", "layer2.2"]
    ref, got = _pre_relu(model, x, blocks), _pre_relu(pruned, x, blocks)
    from chanprune.recovery import consumer_rows, lstsq_refit

    mods, pmods = dict(model.named_modules()), dict(pruned.named_modules())
    for b in blocks:
        conv = b + ".conv2"
        assert layers[b + ".conv1"]["shortcut_correction"] > 0.01  # upstream blocks were pruned
        Xp = consumer_rows(pruned, [conv], [(x, y)], 10_000)[conv]
        Xo = consumer_rows(model, [conv], [(x, y)], 10_000)[conv]
        W = mods[conv].weight.detach().reshape(mods[conv].weight.shape[0], -1).double()
        w_u, b_u = lstsq_refit(Xp, Xo @ W.T, list(range(Xp.shape[1])))  # branch output alone
        bn = mods[b + ".bn2"]
        a = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shortcut = got[(b, "sum")] - got[(b, "branch")]
        alt = a * (Xp @ w_u.T + b_u) + bn.bias.detach().double() - a * bn.running_mean.double() + shortcut
        e_corr = float((got[(b, "sum")] - ref[(b, "sum")]).pow(2).sum())
        e_alt = float((alt - ref[(b, "sum")]).pow(2).sum())
        assert e_corr <= e_alt * (1 + 1e-6), (b, e_corr, e_alt)
        assert e_corr < 0.99 * e_alt, (b, e_corr, e_alt)
        # and it is the optimum itself: the refit fitted directly to the block's sum does no better
        c = bn.bias.detach().double() - a * bn.running_mean.double()
        w_o, b_o = lstsq_refit(Xp, (ref[(b, "sum")] - c - shortcut) / a, list(range(Xp.shape[1])))
        e_opt = float((a * (Xp @ w_o.T + b_o) + c + shortcut - ref[(b, "sum")]).pow(2).sum())
        assert e_corr == pytest.approx(e_opt, rel=1e-5), (b, e_corr, e_opt)
        assert pmods[conv].weight.shape[1] < mods[conv].weight.shape[1]


def test_shortcut_correction_lowers_the_block_error_on_other_images():
    """Stage-1 blocks pruned (later stages kept whole), 128 calibration images: on held-out images the
    last pruned block's output (pre- and post-ReLU) is closer to the original with the correction."""
    keep_whole = tuple(f"layer{s}.{i}.conv1" for s in (2, 3) for i in range(3))
    for seed in range(2):
        model = tiny("resnet20", seed=seed)
        x, y = calib(128, seed=seed)
        xt, _ = calib(48, seed=50 + seed)
        ref = _pre_relu(model, xt, ["layer1.2"])[("layer1.2", "sum")]
        errs = {}
        for corr in (True, False):
            cfg = CPConfig(ratio=0.5, calibration=128, residual_correction=corr, ignored_layers=keep_whole)
            pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
            got = _pre_relu(pruned, xt, ["layer1.2"])[("layer1.2", "sum")]
            errs[corr] = (float((got - ref).norm() / ref.norm()), float((got.relu() - ref.relu()).norm() / ref.relu().norm()))
            assert ("branch_ends" in pruned.chanprune_history[-1]["cp"]) and (bool(pruned.chanprune_history[-1]["cp"]["branch_ends"]) == corr)
        assert errs[True][0] < errs[False][0] and errs[True][1] < errs[False][1], (seed, errs)


def _plant_duplicate(model, block: str, src: int, dst: int):
    """Inner channel ``dst`` of ``block`` becomes an exact copy of ``src`` (filter and BN entries), read by conv2
    with small weights (0.1 × a random column of conv2). It is exactly redundant: conv2's refit can move its
    share onto the twin (W′_src = W_src + W_dst) with no error.

    The LASSO does not look for redundancy: with W fixed it drops the channel whose scaled contribution the
    fit misses least. The fixture therefore makes the twin the weakest channel (small weights; the BN shift is
    raised so that no inner channel is nearly dead; 8 input channels so the others are not nearly collinear)."""
    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(src * 31 + dst)
    with torch.no_grad():
        mods[block + ".bn1"].bias += 0.5
        mods[block + ".conv1"].weight[dst] = mods[block + ".conv1"].weight[src]
        for name in ("running_mean", "running_var", "weight", "bias"):
            getattr(mods[block + ".bn1"], name)[dst] = getattr(mods[block + ".bn1"], name)[src]
        w = mods[block + ".conv2"].weight
        w[:, dst] = 0.1 * w[:, torch.randint(0, w.shape[1], (1,), generator=g).item()]


def test_planted_redundant_channels_are_restored_inside_residual_blocks():
    """A redundant inner channel is the one CP removes, conv2's refit moves its share onto the twin
    (W′_src = W_src + W_dst), and the block outputs and logits are restored to < 1e-4, block after block."""
    model = tiny("resnet20", in_channels=8)
    planted = {"layer1.0": (2, 7), "layer1.2": (5, 1)}
    for block, (src, dst) in planted.items():
        _plant_duplicate(model, block, src, dst)
    keep_whole = ("layer1.1.conv1",) + tuple(f"layer{s}.{i}.conv1" for s in (2, 3) for i in range(3))
    x, y = calib(32, in_channels=8)
    xt, _ = calib(16, in_channels=8, seed=9)
    cfg = CPConfig(ratio=0.125, calibration=32, ridge=0.0, ignored_layers=keep_whole)
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    kept = {g["name"]: g["kept"] for g in pruned.chanprune_history[-1]["groups"]}
    assert kept["layer1.0.conv1"] == kept["layer1.2.conv1"] == 7
    for block, (src, dst) in planted.items():
        w = model.get_submodule(block + ".conv2").weight.detach()
        want = w[:, src] + w[:, dst]  # the twin's share moved onto the kept channel
        got = pruned.get_submodule(block + ".conv2").weight.detach()
        err = min(float((got[:, j] - want).norm() / want.norm()) for j in range(got.shape[1]))
        assert err < 1e-4, (block, err)
    blocks = ["layer1.0", "layer1.1", "layer1.2"]
    ref, got = _pre_relu(model, xt, blocks), _pre_relu(pruned, xt, blocks)
    for b in blocks:
        r, g = ref[(b, "sum")], got[(b, "sum")]
        assert float((g - r).norm() / r.norm()) < 1e-4, b
    with torch.no_grad():
        out, want = pruned(xt), model(xt)
    assert float((out - want).norm() / want.norm()) < 1e-4
    # not trivially true: the same channels zeroed without the refit lose the twins' share
    from chanprune.surgery import mask_hooks

    masked = copy.deepcopy(model)
    hooks = mask_hooks(masked, {b + ".bn1": [dst] for b, (_src, dst) in planted.items()})
    with torch.no_grad():
        assert float((masked(xt) - want).norm() / want.norm()) > 1e-2
    for h in hooks:
        h.remove()


def test_replay_from_a_cut_gives_the_same_rows_and_the_same_pruned_model(monkeypatch):
    """CP's passes start at a cached cut; the rows equal consumer_rows', a module that is not a cut (a residual
    branch's first layer, whose input the shortcut also reads) is refused, and CP's result is the same as
    with every pass starting at the network input."""
    from chanprune.methods import cp as cp_mod
    from chanprune.recovery import consumer_rows
    from chanprune.recovery.stats import Replay

    model = tiny("resnet20")
    x, y = calib(20)
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    replay = Replay(model, batches)
    assert replay.valid("layer2.1") and not replay.valid("layer2.1.conv1") and not replay.valid("layer2.1.bn1")
    replay.move_to("layer2.1")
    names = ["layer2.1.conv2", "layer3.0.conv1", "fc"]
    got, _ = cp_mod.sample_rows(replay, names, {}, 7, 5)
    want = consumer_rows(model, names, batches, 7, 5)
    for n in names:
        assert torch.allclose(got[n], want[n], atol=1e-6), n
    mobile = tiny("mobilenetv2")  # its tiny random version gives the same logits for every image
    assert not Replay(mobile, batches).valid("features.2.conv")  # x + conv(x): the shapes clash
    cfg = CPConfig(target_macs=0.5, calibration=20)
    fast = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    monkeypatch.setattr(Replay, "valid", lambda self, name: False)
    slow = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    xt, _ = calib(8, seed=3)
    with torch.no_grad():
        assert torch.allclose(fast(xt), slow(xt), rtol=1e-4, atol=1e-5)
    assert fast.chanprune_history[-1]["groups"] == slow.chanprune_history[-1]["groups"]
