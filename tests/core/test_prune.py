"""Pruning on every zoo model: channel counts as asked, outputs exact where they must be, targets met."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import chanprune
from chanprune.criteria import L1Config, RandomConfig
from chanprune.errors import ChanpruneError, ConfigError, ModelError, PruneError
from chanprune.cost import count_macs_params
from chanprune.graph import PruningGraph
from chanprune.surgery import prune_copy
from tests.conftest import calib, tiny


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_prune_forward_and_widths(zoo_name, ratio):
    model = tiny(zoo_name)
    x, y = calib(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = chanprune.prune(model, L1Config(ratio=ratio), data=(x, y), example_inputs=x[:1])
    record = pruned.chanprune_history[-1]
    assert record["verified"]
    assert pruned(x).shape == (8, 10)
    graph = PruningGraph(pruned, x[:1])
    # every group now has the width the uniform rule asked for
    want = sorted(max(1, g["channels"] - round(ratio * (g["channels"] - 1))) for g in record["groups"])
    assert sorted(graph.widths()) == want
    # the caller's model is untouched
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert count_macs_params(model, x[:1]) == (record["macs"]["before"], record["params"]["before"])
    assert PruningGraph(model, x[:1]).widths() == [g["channels"] for g in record["groups"]]


def test_ratio_zero_changes_nothing(zoo_name):
    model = tiny(zoo_name)
    x, y = calib(4)
    pruned = chanprune.prune(model, L1Config(ratio=0.0), data=(x, y), example_inputs=x[:1])
    assert torch.equal(pruned(x), model(x))


def test_mac_target_within_one_percent(zoo_name):
    model = tiny(zoo_name)
    x, y = calib(8)
    for target in (0.5, 0.33):
        pruned = chanprune.prune(model, L1Config(target_macs=target), data=(x, y), example_inputs=x[:1])
        achieved = pruned.chanprune_history[-1]["macs"]["kept"]
        assert abs(achieved - target) <= 0.01 * target, (zoo_name, target, achieved)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(3, 10), dead=st.sets(st.integers(0, 9), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_removing_dead_channels_keeps_outputs(width, dead, seed):
    """Channels with zero weights, zero BN and zero outgoing weights carry nothing: removing them is exact."""
    torch.manual_seed(seed)
    dead = sorted(d for d in dead if d < width - 1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        torch.nn.Conv2d(width, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(5, 3),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        for d in dead:
            model[0].weight[d] = 0
            model[0].bias[d] = 0
            model[1].weight[d] = 0
            model[1].bias[d] = 0
            model[3].weight[:, d] = 0
    x = torch.randn(4, 1, 6, 6)
    graph = PruningGraph(model, x[:1])
    group = next(g for g in graph.groups if g.root is model[0])
    pruned, report = prune_copy(model, {group.index: dead}, x[:1])
    assert pruned[0].out_channels == width - len(dead)
    assert torch.allclose(pruned(x), model(x), atol=1e-6)


def test_bad_inputs_give_one_sentence():
    model = tiny("lenet5")
    x, y = calib(4)
    with pytest.raises(ConfigError, match="ratio must lie in"):
        L1Config(ratio=1.0)
    with pytest.raises(ConfigError, match="ratio must lie in"):
        L1Config(ratio=-0.1)
    with pytest.raises(ModelError, match="available|known|choose"):
        chanprune.create_model("resnet9000")
    with pytest.raises(ChanpruneError, match="unknown data set|available"):
        chanprune.load_data("imagenet-42")
    with pytest.raises(PruneError, match="cannot be reached"):
        chanprune.prune(model, L1Config(target_macs=0.0001), data=(x, y), example_inputs=x[:1])

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ModelError, match="could not trace"):
        chanprune.prune(Untraceable(), L1Config(), example_inputs=x[:1])


def test_global_allocation_and_round_to():
    model = tiny("resnet20")
    x, y = calib(8)
    pruned = chanprune.prune(model, L1Config(target_macs=0.5, allocation="global"), data=(x, y), example_inputs=x[:1])
    assert abs(pruned.chanprune_history[-1]["macs"]["kept"] - 0.5) <= 0.005
    pruned = chanprune.prune(model, RandomConfig(ratio=0.5, round_to=4), data=(x, y), example_inputs=x[:1])
    for g in pruned.chanprune_history[-1]["groups"]:
        assert g["kept"] % 4 == 0 or g["kept"] == g["channels"]
