"""UCP: MSEB algebra, neutral insertion on every zoo family, the mean rule, stage-uniform and bottleneck
structure, the mseb criterion, and that 'scratch' recovery keeps no weight of the parent."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chanprune
from chanprune.errors import ConfigError
from chanprune.graph import PruningGraph
from chanprune.ucp import MSEB, UCPConfig, insert_mseb, mseb_scores, strip_mseb
from chanprune.methods.ucp import _reinitialise, eligible, mean_rule, resolve_structure

from tests.conftest import calib, tiny


def test_mseb_with_zero_excitation_weights_halves_its_input():
    block = MSEB(64)
    assert block.squeeze.bias is None and block.squeeze.out_features == 4
    block.make_neutral()
    x = torch.randn(3, 64, 5, 5)
    assert torch.equal(block(x), x / 2)


def test_narrow_mseb_has_one_hidden_unit_with_biases():
    block = MSEB(12)
    assert block.squeeze.out_features == 1 and block.squeeze.bias is not None and block.excite.bias is not None


def test_neutral_insertion_and_strip_keep_the_function(zoo_name):
    model = tiny(zoo_name)
    x, _ = calib(8)
    before = model(x)
    names = insert_mseb(model, x[:1])
    assert names, "every zoo family has a conv feeding a BatchNorm"
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-4)
    strip_mseb(model, mseb_scores(model, [(x, None)]))
    assert not any(type(m).__name__ == "ConvMSEB" for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-4)


def test_scores_are_mean_excitations():
    model = tiny("lenet5")
    x, _ = calib(16)
    insert_mseb(model, x[:1])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MSEB):
                m.excite.weight.normal_()
    scores = mseb_scores(model, [(x[:7], None), (x[7:], None)])
    for name, block in ((n, model.get_submodule(n)) for n in scores):
        # recompute s(x) on the block's input by hand: the mean over both batches equals the score
        inputs = []
        h = block.conv.register_forward_hook(lambda mod, i, o: inputs.append(o.detach()))
        model(x)
        h.remove()
        assert torch.allclose(scores[name].float(), block.mseb.excitation(inputs[0]).mean(0), atol=1e-6)


@pytest.mark.parametrize("values", [[1.0] * 7, [0.5, 0.5, 0.5], [3.0, 0.1, 0.1, 0.1], [0.2, 0.9, 0.4, 0.9]])
def test_mean_rule_keeps_at_least_one_and_all_when_equal(values):
    s = torch.tensor(values, dtype=torch.float64)
    keep = mean_rule(s, 0.999)
    assert keep >= 1
    if len(set(values)) == 1:
        assert keep == len(values)
    else:
        assert keep == int((s > 0.999 * s.mean()).sum())


def _ucp(model, config, data):
    return chanprune.prune(model, config, data=data)


@pytest.fixture(scope="module")
def digits():
    return chanprune.load_data("digits")


def test_basic_resnet_stage_is_pruned_uniformly(digits):
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.5)
    pruned = _ucp(model, UCPConfig(rule="target", target_macs=0.5, mseb_epochs=1, retrain_epochs=0, limit_train=256,
                                   calibration=64), digits)
    assert pruned.chanprune_history[-1]["ucp_structure"] == "basic"
    for stage in (pruned.layer1, pruned.layer2, pruned.layer3):
        widths = {b.conv2.out_channels for b in stage} | {b.bn2.num_features for b in stage}
        if not isinstance(stage[0].shortcut, nn.Identity):
            widths.add(stage[0].shortcut[0].out_channels)
        assert len(widths) == 1, widths
    assert pruned(digits.example_inputs(2)).shape == (2, 10)
    assert pruned.chanprune_history[-1]["macs"]["after"] < 0.52 * pruned.chanprune_history[-1]["macs"]["before"]


def test_bottleneck_prunes_only_the_middle_conv(digits):
    model = chanprune.create_model("resnet29_bottleneck", num_classes=10, in_channels=1, width=0.5)
    pruned = _ucp(model, UCPConfig(rule="target", target_macs=0.7, mseb_epochs=1, retrain_epochs=0, limit_train=256,
                                   calibration=64), digits)
    assert pruned.chanprune_history[-1]["ucp_structure"] == "bottleneck"
    assert pruned.conv1.out_channels == model.conv1.out_channels
    changed = 0
    for stage_p, stage_m in zip((pruned.layer1, pruned.layer2, pruned.layer3), (model.layer1, model.layer2, model.layer3)):
        for bp, bm in zip(stage_p, stage_m):
            assert bp.conv1.out_channels == bm.conv1.out_channels
            assert bp.conv3.out_channels == bm.conv3.out_channels
            assert bp.conv3.in_channels == bp.conv2.out_channels
            changed += bp.conv2.out_channels < bm.conv2.out_channels
    assert changed > 0


def test_structure_detection_on_the_zoo():
    for name, want in (("resnet20", "basic"), ("resnet29_bottleneck", "bottleneck"), ("vgg16_bn", "basic")):
        model = tiny(name)
        graph = PruningGraph(model, calib(1)[0])
        structure = resolve_structure(graph.groups, "auto")
        assert structure == want
        assert any(eligible(graph.groups, structure))


def test_mseb_criterion_ranks_by_the_stored_scores():
    from chanprune.criteria import ScoreContext, get_criterion

    model = tiny("lenet5")
    x, _ = calib(4)
    insert_mseb(model, x[:1])
    scores = {name: torch.rand(model.get_submodule(name).conv.out_channels, dtype=torch.float64)
              for name in (n for n, m in model.named_modules() if type(m).__name__ == "ConvMSEB")}
    strip_mseb(model, scores)
    graph = PruningGraph(model, x[:1])
    ctx = ScoreContext(model, graph)
    for group in graph.groups:
        if group.name in scores:
            assert torch.equal(get_criterion("mseb")(group, ctx), scores[group.name])


def test_mseb_criterion_without_scores_is_one_sentence():
    from chanprune.criteria import ScoreContext, get_criterion

    model = tiny("lenet5")
    graph = PruningGraph(model, calib(1)[0])
    with pytest.raises(ConfigError, match="MSEB score"):
        get_criterion("mseb")(graph.groups[0], ScoreContext(model, graph))


def test_reinitialise_keeps_no_weight_of_the_parent():
    parent = tiny("resnet20")
    child = chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.5)
    child.load_state_dict(parent.state_dict())
    _reinitialise(child)
    for (name, p), q in zip(parent.state_dict().items(), child.state_dict().values()):
        if p.is_floating_point() and p.numel() > 1 and "running" not in name:
            assert not torch.equal(p, q), name
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var))
               for m in child.modules() if isinstance(m, nn.BatchNorm2d))


def test_scratch_recovery_shares_no_tensor_with_the_parent(digits):
    model = chanprune.create_model("lenet5", num_classes=10, in_channels=1)
    pruned = _ucp(model, UCPConfig(rule="target", target_macs=0.6, mseb_epochs=1, recovery="scratch",
                                   retrain_epochs=1, limit_train=256, calibration=64), digits)
    parent_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not parent_ptrs & {t.data_ptr() for t in pruned.state_dict().values()}
    first = pruned.features[0].weight.detach()
    rows = model.features[0].weight.detach()
    assert not any(torch.equal(r, q) for r in first for q in rows)
    assert pruned.chanprune_history[-1]["ucp"]["retraining"]["recovery"] == "scratch"


@pytest.mark.parametrize("kwargs, match", [
    ({"target_macs": 0.5}, "rule='mean'"),
    ({"structure": "wide"}, "structure"),
    ({"recovery": "scratch", "retrain_epochs": 0}, "retrain_epochs"),
    ({"mseb_init": "scratch", "mseb_epochs": 0}, "mseb_epochs"),
])
def test_bad_config_is_one_sentence(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UCPConfig(**kwargs)
