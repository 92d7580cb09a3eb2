"""Issue 16's patterns, one small model each, pruned with every method: verified, or one clean sentence.

* a ResNeXt-style block (grouped 3×3 conv, 8 groups, inside a 45-channel residual stage), with and without
  ``round_to=8``: every method that prunes it removes whole per-group slices, equal counts per group;
* a ConvNeXt-style channels-last block (depthwise conv → permute → LayerNorm → Linear → GELU → Linear →
  layer scale → permute back, residual): hooks read channels on the last axis there;
* an SE block whose hidden ReLU is zero on every calibration image: CP's refit sees all-zero inputs;
* the messages: CP/CaP name the groups they leave whole and the option that reaches the target; an
  excluded group is named in the record's warning instead of "coarse channel counts".
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import chanprune as cp
from chanprune.errors import ChanpruneError, PruneError
from chanprune.graph import PruningGraph
from chanprune.recovery.lstsq import lstsq_refit
from tests.fuzz._archs import LayerScale, method_configs, one_sentence, random_bundle, refit_check


class ResNeXt(nn.Module):
    def __init__(self, c=45, w=64, groups=8):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn0 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c1, self.b1 = nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w)
        self.c2, self.b2 = nn.Conv2d(w, w, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(w)
        self.c3, self.b3 = nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        x = F.relu(x + self.b3(self.c3(y)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvNeXt(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.ls = LayerScale(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.ls(self.pw2(F.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1))))))
        x = x + y.permute(0, 3, 1, 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DeadSE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.se1, self.se2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        with torch.no_grad():
            self.se1.bias.fill_(-100.0)  # the hidden ReLU is zero on every image
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = x * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.b2(self.c2(x))), 1).flatten(1))


def _data(n=64, side=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def _prune(model, config):
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(config, (cp.CACPConfig, cp.UCPConfig)):  # methods that need a training split: random images
            bundle = random_bundle({"in_channels": 3, "size": 16, "classes": 10}, n=128)
            pruned = cp.prune(model.eval(), config, bundle, example_inputs=x[:1])
            return pruned.at(config.support[0]) if isinstance(config, cp.CACPConfig) else pruned
        return cp.prune(model.eval(), config, (x, y), example_inputs=x[:1])


def _config(method, **kw):
    base = method_configs(calibration=64)[method]
    from dataclasses import replace

    return replace(base, **kw)


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize("method", ["l1", "bn_scale", "random", "taylor", "hierarchical"])
def test_grouped_convs_lose_whole_slices(method, round_to):
    """Removed channels of the grouped conv's groups are the same positions in each of its 8 slices."""
    pruned = _prune(ResNeXt(), _config(method, round_to=round_to))
    record = pruned.chanprune_history[-1]
    assert record["verified"] and abs(record["macs"]["kept"] - 0.5) < 0.06, record["macs"]
    c2 = pruned.c2
    assert c2.groups == 8 and c2.in_channels % 8 == 0 and c2.out_channels % 8 == 0
    for g in record["groups"]:
        if g["name"] in ("c1", "c2") and g["removed"]:
            slices = [{r % 8 for r in g["removed"] if r // 8 == k} for k in range(8)]
            assert all(s == slices[0] for s in slices), g


def test_grouped_conv_classes_are_read_from_the_graph():
    graph = PruningGraph(ResNeXt().eval(), torch.randn(1, 3, 8, 8))
    by_name = {g.name: g for g in graph.groups}
    assert by_name["c1"].classes == [[p + 8 * k for k in range(8)] for p in range(8)]
    assert by_name["c3"].classes is None and graph.steps(8)[graph.groups.index(by_name["c1"])] == 8
    assert graph.steps(3)[graph.groups.index(by_name["c1"])] == 24


@pytest.mark.parametrize("method", sorted(set(method_configs()) - {"ucp"}))
def test_channels_last_block_is_pruned_and_verified(method):
    pruned = _prune(ConvNeXt(), _config(method))
    record = pruned.chanprune_history[-1]
    assert record["verified"] and any(g["removed"] for g in record["groups"])


def test_layernorm_witness_recomputes_over_kept_channels():
    """A LayerNorm over the channels normalises over the channels it has: zeroing a removed channel at its
    output is not removal; the witness recomputes it, so a correct surgery verifies (it did not before)."""
    from chanprune.surgery import prune_copy

    model = ConvNeXt().eval()
    x = torch.randn(2, 3, 16, 16)
    graph = PruningGraph(model, x[:1])
    gi = next(g.index for g in graph.groups if any(m.name == "norm" for m in g.members))
    _, report = prune_copy(model, {gi: [0, 5]}, x[:1], probe=x)
    assert report.verified


def test_cp_refit_survives_dead_units():
    """Every hidden unit of the SE block is dead: CP's least squares sees all-zero inputs (λ = 0)."""
    pruned = _prune(DeadSE(), _config("cp", target_macs=None, ratio=0.5))
    record = pruned.chanprune_history[-1]
    assert record["verified"] and dict((g["name"], g["kept"]) for g in record["groups"])["se1"] < 8
    x, _ = _data()
    assert refit_check("cp", DeadSE().eval(), pruned, x) is None


def test_lstsq_refit_of_constant_inputs_is_the_mean():
    X, Y = torch.zeros(50, 6), torch.randn(50, 3)
    for ridge in (0.0, 1e-3):
        w, b = lstsq_refit(X, Y, [0, 2, 4], ridge=ridge)
        assert torch.equal(w, torch.zeros(3, 3, dtype=torch.float64)) and torch.allclose(b, Y.double().mean(0))


@pytest.mark.parametrize("method", ["cp", "cap"])
def test_refit_methods_name_what_they_leave_whole(method):
    with pytest.raises(ChanpruneError) as exc:
        _prune(ResNeXt(), _config(method))
    msg = str(exc.value)
    assert one_sentence(msg) and "'c1'" in msg and "grouped" in msg and ("HierarchicalConfig" in msg or "residual=True" in msg)


def test_cap_target_out_of_reach_names_residual_true():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.ba = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.b, self.bb = nn.Conv2d(16, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c, self.bc = nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.ba(self.a(x)))
            x = F.relu(x + self.bc(self.c(F.relu(self.bb(self.b(x))))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    with pytest.raises(PruneError) as exc:
        _prune(Res(), _config("cap", target_macs=0.3))
    msg = str(exc.value)
    assert one_sentence(msg) and "residual=True" in msg and "'c': a residual stream" in msg and "cannot be reached" in msg
    assert _prune(Res(), _config("cap", target_macs=0.3, residual=True)).chanprune_history[-1]["verified"]


def test_excluded_groups_are_named_in_the_warning(monkeypatch):
    """A group dropped by on_mismatch='exclude' is the reason a target is missed, not coarse channel counts."""
    from chanprune import surgery

    real = surgery._surgery

    def failing(graph, plan, *args, **kw):  # the surgery of any plan touching 'c3' fails verification
        if any(graph.groups[gi].name == "c3" for gi in plan):
            raise cp.errors.VerificationError("simulated.")
        return real(graph, plan, *args, **kw)

    monkeypatch.setattr(surgery, "_surgery", failing)
    record = _prune(ResNeXt(), _config("l1", on_mismatch="exclude")).chanprune_history[-1]
    assert record["excluded_groups"] and "coarse" not in record["warning"]
    assert "'c3'" in record["warning"] and "ignored_layers=['c3']" in record["warning"]


def test_analysis_keeps_whole_classes_of_a_grouped_conv():
    """The effective filters of a group tied by a grouped conv are a multiple of its class size (8 here)."""
    from chanprune.analysis.effective import AnalysisConfig, analyze

    model = ResNeXt().eval()
    x, y = _data()
    result = analyze(model, (x, y), AnalysisConfig(reading="gate", calibration=64))
    graph = PruningGraph(model, x[:1])
    for g, k in zip(graph.groups, result.effective):
        assert k % g.step == 0 or k == g.channels, (g.name, k)
    assert result.rerank("rel", 0.5).effective[[g.name for g in graph.groups].index("c1")] % 8 == 0


def test_a_narrow_concatenated_branch_keeps_a_channel():
    """Found by bench/fuzz_surgery.py: a 'twice' conv ties a concatenation's branches into one group, and L1 would
    remove the one channel of branch 'body.2.b'; the plan keeps it and removes another channel instead, so the
    surgery verifies instead of refusing."""
    from tests.fuzz._archs import run_method

    spec = {"in_channels": 1, "size": 4, "classes": 4, "head": {"kind": "gap", "hidden": 6},
            "body": [{"kind": "conv", "width": 12, "groups": 1, "bn": False},
                     {"kind": "cat", "wa": 15, "wb": 1, "with_input": False}, {"kind": "cat", "wa": 15, "wb": 1, "with_input": False},
                     {"kind": "twice"}, {"kind": "cat", "wa": 2, "wb": 4, "with_input": False}]}
    assert run_method(spec, "l1")[0] == "verified"


def test_ucp_refuses_a_model_without_conv_batchnorm_pairs_in_one_sentence():
    with pytest.raises(ChanpruneError) as exc:
        _prune(ConvNeXt(), _config("ucp"))
    assert one_sentence(str(exc.value)) and "BatchNorm" in str(exc.value)


def test_a_mapping_hidden_behind_channels_dead_on_the_crop_is_caught():
    """Found by bench/fuzz_surgery.py: Torch-Pruning maps the concatenated flattened pools wrongly, and the kept
    channel is ReLU-dead on the centre crop of the first probe images, so the crop comparison saw no difference;
    the dead inputs send the comparison to full size on all calibration images given, which catches it."""
    from tests.fuzz._archs import run_method

    spec = {"in_channels": 1, "size": 20, "classes": 2, "head": {"kind": "catflat", "hidden": None, "side": None, "swap": False},
            "body": [{"kind": "conv", "width": 2, "groups": 1, "bn": False}, {"kind": "twice"}]}
    outcome, reason, message = run_method(spec, "l1")
    assert outcome == "refused" and "first divergence at 'head.fc'" in message


def test_a_group_torch_pruning_maps_onto_missing_channels_is_kept_whole():
    """Found by bench/fuzz_surgery.py: Torch-Pruning maps a group onto channels a layer does not have (a
    concatenation feeding an 8-group conv); every method keeps that group whole instead of crashing in a criterion."""
    from tests.fuzz._archs import run_method

    spec = {"in_channels": 1, "size": 4, "classes": 4, "head": {"kind": "gap", "hidden": 6},
            "body": [{"kind": "conv", "width": 12, "groups": 1, "bn": False}, {"kind": "cat", "wa": 15, "wb": 1, "with_input": False},
                     {"kind": "conv", "width": 8, "groups": 8, "bn": True, "act": "hardswish", "dead": 0},
                     {"kind": "unet", "ws": 13, "wd": 2, "wo": 3}, {"kind": "twice"}]}
    for method in ("l1", "taylor", "hrank", "hierarchical"):
        assert run_method(spec, method)[0] != "crashed", method
