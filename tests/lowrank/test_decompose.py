"""Decomposition: exactness, MAC accounting, skipping, MAC targets, save/load, and channel pruning both ways."""
import json

import pytest
import torch
from torch import nn

import chanprune
from chanprune.errors import ConfigError, LoadError, PruneError
from chanprune.lowrank import (DecomposeConfig, LowRank, decompose, decompose_layer, from_matrix, plan_decomposition,
                               to_matrix)
from chanprune.measurement import count_macs_params

from tests.conftest import calib, tiny


def _rank_r_conv(scheme, r, cin=6, cout=8, kernel=(3, 3), seed=0, **kw):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, **kw)
    m = to_matrix(conv.weight.detach(), scheme)
    low = torch.randn(m.shape[0], r) @ torch.randn(r, m.shape[1]) / r ** 0.5
    with torch.no_grad():
        conv.weight.copy_(from_matrix(low, scheme, conv.weight.shape))
        if conv.bias is not None:
            conv.bias.uniform_(-1, 1)
    return conv.eval()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


CONV_CASES = {
    "plain": dict(padding=1),
    "stride2-bias": dict(padding=1, stride=2, bias=True),
    "dilation": dict(padding=2, dilation=2, bias=False),
    "rect-kernel-reflect": dict(kernel=(3, 5), padding=(1, 2), padding_mode="reflect"),
    "circular": dict(padding=1, padding_mode="circular"),
    "same": dict(padding="same", bias=False),
    "valid-stride": dict(padding=0, stride=(2, 1)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("r", [1, 3])
def test_exact_rank_conv_is_reproduced(scheme, case, r):
    kw = dict(CONV_CASES[case])
    conv = _rank_r_conv(scheme, r, kernel=kw.pop("kernel", (3, 3)), **kw)
    # the energy rule at e ≈ 1 finds the rank, and the pair reproduces the conv
    plans, _ = plan_decomposition(nn.Sequential(nn.Identity(), conv), DecomposeConfig(scheme=scheme, threshold=1 - 1e-9,
                                  include_strided=True, include_first=True), example_inputs=torch.randn(1, 6, 11, 13))
    assert plans[0].rank == r
    pair = decompose_layer(conv, scheme, r)
    assert isinstance(pair, LowRank) and pair.rank == r and pair.scheme == scheme
    x = torch.randn(3, 6, 11, 13)
    with torch.no_grad():
        y, y2 = conv(x), pair(x)
    assert y.shape == y2.shape
    assert _rel(y2, y) < 1e-5
    # a lower rank is not exact (the comparison can fail)
    if r > 1:
        with torch.no_grad():
            assert _rel(decompose_layer(conv, scheme, r - 1)(x), y) > 1e-3


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_full_rank_pair_is_lossless(scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True).eval()
    full = min(to_matrix(conv.weight, scheme).shape)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert _rel(decompose_layer(conv, scheme, full)(x), conv(x)) < 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_exact_rank_linear_is_reproduced(bias):
    torch.manual_seed(0)
    lin = nn.Linear(20, 12, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(12, 2) @ torch.randn(2, 20))
    pair = decompose_layer(lin, "linear", 2)
    assert [type(m) for m in pair] == [nn.Linear, nn.Linear] and pair[0].out_features == 2
    x = torch.randn(5, 20)
    with torch.no_grad():
        assert _rel(pair(x), lin(x)) < 1e-5
        assert _rel(decompose_layer(lin, "linear", 1)(x), lin(x)) > 1e-3


def test_bad_ranks_and_layers_are_config_errors():
    conv = nn.Conv2d(4, 6, 3)
    with pytest.raises(ConfigError, match="rank must be an integer from 1 to 6"):
        decompose_layer(conv, "channel", 7)
    with pytest.raises(ConfigError, match="groups=1"):
        decompose_layer(nn.Conv2d(4, 4, 3, groups=4), "channel", 1)
    with pytest.raises(ConfigError, match="Linear"):
        decompose_layer(conv, "linear", 1)
    model = tiny("resnet20")
    with pytest.raises(ConfigError, match="not a module"):
        decompose(model, DecomposeConfig(layers=["nosuch"]), example_inputs=calib(1)[0])
    with pytest.raises(ConfigError, match="only Conv2d"):
        decompose(model, DecomposeConfig(layers=["bn1"]), example_inputs=calib(1)[0])
    with pytest.raises(ConfigError, match="ranks names layer"):
        decompose(model, DecomposeConfig(ranks={"conv1": 2}), example_inputs=calib(1)[0])
    for bad in (dict(scheme="nd"), dict(threshold=0), dict(target_macs=1.5), dict(rule="value", target_macs=0.5),
                dict(ranks={"a": 0}), dict(layers="conv1")):
        with pytest.raises(ConfigError):
            DecomposeConfig(**bad)
    with pytest.raises(ConfigError, match="pass data"):
        decompose(model)


def test_layers_that_would_not_save_macs_are_skipped():
    """At full rank no square 3×3 conv pays: channel form r(C·9 + N) ≥ N·C·9 when r = min(N, 9C)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1),
                          nn.Conv2d(2, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(2, 1, 10, 10)
    for scheme in ("channel", "spatial"):
        out = decompose(model, DecomposeConfig(scheme=scheme, threshold=1.0), example_inputs=x[:1])
        rec = {r["name"]: r for r in out.chanprune_history[-1]["layers"]}
        assert set(rec) == {"1", "2", "3"}  # the first conv is never a default target
        for name in ("1", "2", "3"):
            assert not rec[name]["decompose"] and "would not reduce MACs" in rec[name]["reason"]
            assert rec[name]["macs_after"] == rec[name]["macs_before"] and type(out[int(name)]) is nn.Conv2d
        assert out.chanprune_history[-1]["macs"]["after"] == out.chanprune_history[-1]["macs"]["before"]
        with torch.no_grad():
            assert torch.equal(out(x), model(x))
    # at a low threshold the 16→16 conv does pay and is decomposed
    out = decompose(model, DecomposeConfig(threshold=0.3), example_inputs=x[:1])
    assert isinstance(out[3], LowRank) and count_macs_params(out, x[:1])[0] < count_macs_params(model, x[:1])[0]


def test_skipped_layer_stays_and_saving_layer_is_decomposed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 2, 3, padding=1), nn.Conv2d(2, 16, 3, padding=1)).eval()
    with torch.no_grad():  # make layer 1 rank 1: r(16·9 + 2) = 146 < 2·16·9 = 288 → decomposed
        model[1].weight.copy_(from_matrix(torch.randn(2, 1) @ torch.randn(1, 144), "channel", model[1].weight.shape))
    x = torch.randn(1, 1, 10, 10)
    out = decompose(model, DecomposeConfig(scheme="channel", threshold=1 - 1e-9), example_inputs=x)
    rec = {r["name"]: r for r in out.chanprune_history[-1]["layers"]}
    assert rec["1"]["decompose"] and rec["1"]["rank"] == 1 and isinstance(out[1], LowRank)
    # layer 2: 16×18 of full rank 16: 16·(18 + 16) = 544 ≥ 288, so it stays
    assert rec["2"]["rank"] == 16 and not rec["2"]["decompose"] and type(out[2]) is nn.Conv2d
    # an explicit rank that does not pay is skipped too
    out2 = decompose(model, DecomposeConfig(scheme="channel", ranks={"1": 2}), example_inputs=x)
    rec2 = {r["name"]: r for r in out2.chanprune_history[-1]["layers"]}
    assert not rec2["1"]["decompose"] and type(out2[1]) is nn.Conv2d and "would not reduce MACs" in rec2["1"]["reason"]
    with torch.no_grad():
        assert _rel(out(x), model(x)) < 1e-5


ZOO = ["resnet20", "resnet56", "vgg16_bn", "densenet40", "lenet5", "mobilenetv2"]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_predicted_macs_match_the_counter_and_models_round_trip(tmp_path, name, scheme):
    model = tiny(name)
    x = calib(4)[0]
    cfg = DecomposeConfig(scheme=scheme, threshold=0.7, include_strided=True)
    plans, info = plan_decomposition(model, cfg, example_inputs=x[:1])
    out = decompose(model, cfg, example_inputs=x[:1])
    rec = out.chanprune_history[-1]
    # the per-layer formulas (methods.md §8) predict Torch-Pruning's count exactly
    assert rec["macs"]["before"] - info["macs_saved"] == rec["macs"]["after"]
    if name == "mobilenetv2":  # depthwise 3×3 and 1×1 convs only: nothing to decompose
        assert rec["decomposed"] == 0
    else:
        assert rec["decomposed"] > 0 and rec["macs"]["after"] < rec["macs"]["before"]
    assert sum(isinstance(m, LowRank) for m in out.modules()) == rec["decomposed"]
    # save/load: same architecture, bit-identical weights and outputs, ranks in the spec
    chanprune.save(out, tmp_path / "m", history=out.chanprune_history)
    back = chanprune.load(tmp_path / "m")
    sd, sd2 = out.state_dict(), back.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    out.eval()
    with torch.no_grad():
        assert torch.equal(back(x), out(x))
    spec = json.loads((tmp_path / "m.json").read_text())
    lowrank = {k: v for k, v in spec["layers"].items() if v["type"] == "LowRank"}
    assert {k: v["rank"] for k, v in lowrank.items()} == {n: m.rank for n, m in out.named_modules() if isinstance(m, LowRank)}
    assert not any(k.startswith(tuple(f"{n}." for n in lowrank)) for k in spec["layers"])  # parts live inside the entry


def test_target_macs_picks_the_largest_threshold_within_budget():
    model = tiny("resnet20")
    x = calib(1)[0]
    base = count_macs_params(model, x)[0]
    for target in (0.6, 0.8, 0.95):
        out = decompose(model, DecomposeConfig(target_macs=target, include_strided=True), example_inputs=x)
        rec = out.chanprune_history[-1]
        assert rec["macs"]["after"] <= target * base
        e = rec["threshold"]
        # the next candidate threshold (slightly more energy) would exceed the budget
        if e < 1.0:
            bigger = decompose(model, DecomposeConfig(threshold=min(1.0, e + 1e-9), include_strided=True), example_inputs=x)
            assert bigger.chanprune_history[-1]["macs"]["after"] > target * base
    with pytest.raises(PruneError, match="out of reach"):
        decompose(model, DecomposeConfig(target_macs=0.01), example_inputs=x)


def test_top_level_exports():
    from chanprune import lowrank

    assert chanprune.decompose is decompose and chanprune.DecomposeConfig is DecomposeConfig
    assert chanprune.LowRank is LowRank and chanprune.trp_train is lowrank.trp_train
    assert chanprune.TRPConfig is lowrank.TRPConfig and callable(chanprune.decompose)


def test_decompose_leaves_the_argument_untouched():
    model = tiny("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decompose(model, DecomposeConfig(threshold=0.5), example_inputs=calib(1)[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, LowRank) for m in model.modules())


@pytest.mark.parametrize("method", ["l1", "hierarchical"])
def test_channel_pruning_after_decomposition(tmp_path, method):
    """The pruning graph sees each pair's inner rank channels as a group of its own; surgery verifies and saves."""
    model = tiny("resnet20")
    x, y = calib(64)
    small = decompose(model, DecomposeConfig(threshold=0.9), example_inputs=x[:1])
    ranks = {n: m.rank for n, m in small.named_modules() if isinstance(m, LowRank)}
    if method == "l1":
        cfg = chanprune.L1Config(target_macs=0.5)
    else:
        cfg = chanprune.HierarchicalConfig(target_macs=0.5, calibration=64, allow_exceed=True)
    pruned = chanprune.prune(small, cfg, data=(x, y), example_inputs=x[:1])
    rec = pruned.chanprune_history[-1]
    assert rec["verified"] and abs(rec["macs"]["kept"] - 0.5) < 0.02
    assert [h["method"] for h in pruned.chanprune_history] == ["decompose", method]
    after = {n: m.rank for n, m in pruned.named_modules() if isinstance(m, LowRank)}
    assert set(after) == set(ranks) and all(after[n] <= ranks[n] for n in ranks)
    chanprune.save(pruned, tmp_path / "p", history=pruned.chanprune_history)
    back = chanprune.load(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(back(x), pruned.eval()(x))


def test_decomposition_after_channel_pruning(tmp_path):
    model = tiny("resnet20")
    x, y = calib(32)
    pruned = chanprune.prune(model, chanprune.L1Config(target_macs=0.6), data=(x, y), example_inputs=x[:1])
    small = decompose(pruned, DecomposeConfig(scheme="spatial", threshold=0.6), example_inputs=x[:1])
    assert small.chanprune_history[-1]["decomposed"] > 0
    assert [h["method"] for h in small.chanprune_history] == ["l1", "decompose"]
    chanprune.save(small, tmp_path / "s")
    back = chanprune.load(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(back(x), small.eval()(x))


# ----------------------------------------------------------------------------------- spec validation

@pytest.fixture
def saved_lowrank(tmp_path):
    model = tiny("resnet20")
    small = decompose(model, DecomposeConfig(threshold=0.8), example_inputs=calib(1)[0])
    stem = tmp_path / "m"
    chanprune.save(small, stem)
    return stem


def _entry(doc):
    return next(v for v in doc["layers"].values() if v["type"] == "LowRank")


MUTATIONS = {
    "rank disagrees with the parts": (lambda e: e.update(rank=e["rank"] + 1), r"rank is \d+ but its parts meet"),
    "unknown scheme": (lambda e: e.update(scheme="nd"), r"scheme must be one of"),
    "rank not an integer": (lambda e: e.update(rank=2.5), r"rank must be an integer"),
    "three parts": (lambda e: e["layers"].append(dict(e["layers"][1])), r"list of its 2 parts"),
    "a part is a LowRank": (lambda e: e["layers"].__setitem__(0, {"type": "LowRank", "scheme": "channel", "rank": 1,
                                                                  "layers": []}), r"must be a Conv2d entry"),
    "a Linear part in a conv scheme": (lambda e: e["layers"].__setitem__(1, {"type": "Linear", "in_features": 2,
                                                                             "out_features": 2, "bias": True}),
                                       r"must be a Conv2d entry"),
    "spatial kernels on a channel pair": (lambda e: e.update(scheme="spatial"), r"k×1 conv then a 1×k conv"),
    "second part not 1×1": (lambda e: e["layers"][1].update(kernel_size=[3, 3]), r"must be a 1×1 conv"),
    "missing field": (lambda e: e.pop("rank"), r"missing field 'rank'"),
    "unknown field": (lambda e: e.update(extra=1), r"unknown field 'extra'"),
    "bad part value": (lambda e: e["layers"][0].update(stride=[0, 1]), r"part 0 stride must be"),
    "grouped part": (lambda e: e["layers"][0].update(groups=2), r"groups"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_broken_lowrank_entries_are_one_sentence_load_errors(saved_lowrank, case):
    mutate, pattern = MUTATIONS[case]
    path = saved_lowrank.with_suffix(".json")
    doc = json.loads(path.read_text())
    mutate(_entry(doc))
    path.write_text(json.dumps(doc))
    with pytest.raises(LoadError, match=pattern) as info:
        chanprune.load(saved_lowrank)
    assert "\n" not in str(info.value)


def test_lowrank_entry_on_a_layer_of_another_type_is_refused(saved_lowrank):
    path = saved_lowrank.with_suffix(".json")
    doc = json.loads(path.read_text())
    name = next(k for k, v in doc["layers"].items() if v["type"] == "LowRank")
    doc["layers"]["bn1"] = doc["layers"].pop(name)
    path.write_text(json.dumps(doc))
    with pytest.raises(LoadError, match="LowRank in the spec but a BatchNorm2d"):
        chanprune.load(saved_lowrank)
