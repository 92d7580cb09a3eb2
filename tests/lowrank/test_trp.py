"""TRP training: the hooks do what methods.md §8 says, a tiny run on digits lowers the rank, resume is exact."""

import pytest
import torch
from torch import nn

import chanprune
from chanprune.engine import TrainConfig
from chanprune.errors import ConfigError
from chanprune.lowrank import DecomposeConfig, TRPConfig, TRPHooks, decompose, layer_ranks, project, trp_train

from tests.conftest import calib, tiny

TINY = dict(num_classes=10, in_channels=1, width=0.5)


def _model(seed=0):
    torch.manual_seed(seed)
    return chanprune.create_model("resnet20", **TINY)


def test_config_validation():
    for bad in (dict(energy=0), dict(energy=1.2), dict(period=0), dict(nuclear_weight=-1.0), dict(subgrad="x"),
                dict(scheme="nd"), dict(project=False, nuclear_weight=0), dict(layers="conv1"), dict(period=True)):
        with pytest.raises(ConfigError):
            TRPConfig(**bad)
    with pytest.raises(ConfigError, match="no layer"):
        TRPHooks(nn.Sequential(nn.Conv2d(1, 2, 3)), TRPConfig())


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_projection_and_subgradient_at_period_steps_only(scheme):
    model = tiny("resnet20").train()
    x, y = calib(8)
    cfg = TRPConfig(scheme=scheme, energy=0.8, period=3, nuclear_weight=0.01)
    hooks = TRPHooks(model, cfg, start_step=3)
    names = [n for n, _, _ in hooks.targets]
    assert "conv1" not in names and not any("shortcut" in n for n in names)
    assert all(tuple(m.stride) == (1, 1) for _, m, _ in hooks.targets)
    expected = {n: project(m.weight, scheme, "energy", 0.8) for n, m, _ in hooks.targets}
    with hooks:
        g_trp = _grads(model, x, y)  # step 3: projects, then adds λ·U_rV_rᵀ to the gradient
    assert hooks.projections == 1 and hooks.trace[0]["step"] == 3
    for n, m, _ in hooks.targets:
        assert torch.allclose(m.weight, expected[n].weight, atol=1e-6)
        assert hooks.last[n]["rank"] == expected[n].rank
    g_plain = _grads(model, x, y)  # same (projected) weights, no hooks
    for n, m, _ in hooks.targets:
        diff = g_trp[f"{n}.weight"] - g_plain[f"{n}.weight"]
        assert torch.allclose(diff, 0.01 * expected[n].subgradient, atol=1e-6)
    others = [k for k in g_plain if not any(k == f"{n}.weight" for n in names)]
    assert all(torch.allclose(g_trp[k], g_plain[k], atol=1e-6) for k in others)
    # steps 4 and 5 are plain SGD steps: nothing is projected or added
    hooks.step_done({"global_step": 4})
    before = {n: m.weight.detach().clone() for n, m, _ in hooks.targets}
    with hooks:
        g4 = _grads(model, x, y)
    assert hooks.projections == 1
    assert all(torch.equal(before[n], m.weight) for n, m, _ in hooks.targets)
    assert all(torch.allclose(g4[k], g_plain[k], atol=1e-6) for k in g4)


def test_hooks_ignore_evaluation_passes():
    model = tiny("resnet20")
    x, _ = calib(4)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with TRPHooks(model, TRPConfig(energy=0.5, period=1)) as hooks:
        model.eval()
        model(x)
        model.train()
        with torch.no_grad():
            model(x)
    assert hooks.projections == 0
    assert all(torch.equal(v, p) for (k, v), (_, p) in zip(before.items(), model.named_parameters()))


def test_nuclear_only_leaves_weights_unprojected():
    model = tiny("resnet20").train()
    x, y = calib(8)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with TRPHooks(model, TRPConfig(project=False, nuclear_weight=0.1, period=1)):
        _grads(model, x, y)
    assert all(torch.equal(w0[n], p) for n, p in model.named_parameters())


def test_tiny_trp_run_on_digits_lowers_the_rank():
    data = chanprune.load_data("digits")
    tcfg = TrainConfig(epochs=2, lr=0.05, batch_size=64, device="cpu")
    cfg = TRPConfig(energy=0.8, period=2, nuclear_weight=1e-3)
    plain = _model()
    chanprune.train(plain, data, tcfg, progress=False, eval_each_epoch=False)
    model = _model()
    h = trp_train(model, data, cfg, tcfg, progress=False, eval_each_epoch=False)
    info = h["trp"]
    steps = h["global_step"]
    assert info["projections"] == (steps + 1) // 2  # steps 0, 2, 4, ...
    before, after = info["ranks_before"], info["ranks_after"]
    plain_ranks = layer_ranks(plain, "channel", 0.8)
    assert set(before) == set(after) == set(plain_ranks)
    assert sum(after.values()) < 0.8 * sum(before.values())
    assert sum(after.values()) < 0.8 * sum(plain_ranks.values())
    assert h["test_accuracy"] > 25  # it still learned (10 classes; about 52% measured, plain training 76%)
    # the TRP model decomposes at the training energy with almost no change; the plain one loses more
    x = data.calibration(256)[0]
    cfg_d = DecomposeConfig(threshold=0.8, include_linear=False)
    losses = {}
    for label, m in (("trp", model), ("plain", plain)):
        small = decompose(m, cfg_d, data=data)
        with torch.no_grad():
            losses[label] = float((small.eval()(x) - m.eval()(x)).abs().max() / m(x).abs().max())
    assert losses["trp"] < losses["plain"]


class _Stop(Exception):
    pass


def test_killed_trp_run_resumes_bit_identically(tmp_path):
    data = chanprune.load_data("digits")
    tcfg = TrainConfig(epochs=2, lr=0.05, batch_size=64, limit_train=384, checkpoint_every=1, device="cpu")
    cfg = TRPConfig(energy=0.8, period=4, nuclear_weight=1e-3)
    ref = _model()
    trp_train(ref, data, cfg, tcfg, progress=False, eval_each_epoch=False)

    def stop_at(step):
        def cb(info):
            if info["global_step"] == step:
                raise _Stop
        return cb

    model = _model()
    for step in (3, 6, 8):  # mid-epoch before a projection step, at one, at the epoch end
        with pytest.raises(_Stop):
            trp_train(model, data, cfg, tcfg, checkpoint_dir=tmp_path / "state", progress=False, eval_each_epoch=False,
                      callback=stop_at(step))
        model = _model(seed=123)  # a fresh process would start from other weights: the checkpoint must win
    h = trp_train(model, data, cfg, tcfg, checkpoint_dir=tmp_path / "state", progress=False, eval_each_epoch=False)
    assert h["resumed_from"] is not None
    sd, ref_sd = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    # other TRP settings may not resume this checkpoint, and a non-TRP checkpoint is refused
    with pytest.raises(ConfigError, match="other TRP settings"):
        trp_train(_model(), data, TRPConfig(energy=0.9, period=4, nuclear_weight=1e-3), tcfg,
                  checkpoint_dir=tmp_path / "state", progress=False)
    (tmp_path / "state" / "trp.json").unlink()
    with pytest.raises(ConfigError, match="not written by a TRP run"):
        trp_train(_model(), data, cfg, tcfg, checkpoint_dir=tmp_path / "state", progress=False)
