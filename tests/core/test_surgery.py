"""Verified surgery: pruned == original masked at the removed channels, and a wrong mapping is caught."""
import pytest
import torch

from chanprune.errors import VerificationError
from chanprune.graph import PruningGraph
from chanprune.surgery import apply_plan, prune_copy
import copy

from torch import nn

from chanprune import surgery
from tests.conftest import calib, tiny


def test_random_plans_verify(zoo_name):
    model = tiny(zoo_name)
    x, _ = calib(4)
    graph = PruningGraph(model, x[:1])
    gen = torch.Generator().manual_seed(1)
    plan = {g.index: torch.randperm(g.channels, generator=gen)[: g.channels // 2].tolist() for g in graph.groups}
    pruned, report = prune_copy(model, plan, x[:1])
    assert report.verified and report.max_rel_error < 1e-5  # float32 check (surgery.TOLERANCE)


def test_wrong_consumer_mapping_is_caught():
    """Sabotage the consumer side after removal: verification names the diverging layer."""
    model = tiny("lenet5")
    x, _ = calib(4)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    g = graph.groups[0]
    original_remove = graph.remove

    def sabotaged(plan):
        original_remove(plan)
        consumer = g.consumers[0].module
        with torch.no_grad():
            consumer.weight.copy_(consumer.weight.roll(1, dims=1))  # shift input columns: a wrong index map

    graph.remove = sabotaged
    with pytest.raises(VerificationError, match="first divergence"):
        apply_plan(graph, {0: [0, 2]}, model)
    # the caller's model is untouched
    assert torch.equal(model(x), tiny("lenet5")(x))


def _sabotage(graph, group):
    original_remove = graph.remove

    def sabotaged(plan):
        original_remove(plan)
        consumer = group.consumers[0].module
        with torch.no_grad():
            consumer.weight.copy_(consumer.weight.roll(1, dims=1))

    graph.remove = sabotaged


def test_large_inputs_are_verified_on_a_crop_and_a_wrong_mapping_is_still_caught(monkeypatch):
    model = tiny("resnet20")
    x, _ = calib(2, size=28)
    # this random-weight net has channels dead on the crops, which would send the check to full size
    # (test_patterns.py::test_a_mapping_hidden_behind_channels_dead_on_the_crop_is_caught); here, the crop itself
    monkeypatch.setattr(surgery, "_dead_inputs", lambda *a: [])
    pruned, report = prune_copy(model, {0: [0, 1]}, x[:1])
    assert report.verified and report.probe_shape == (surgery.PROBE_SIZE, 1, surgery.PROBE_SIDE, surgery.PROBE_SIDE)
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    _sabotage(graph, graph.groups[0])
    with pytest.raises(VerificationError, match="first divergence"):
        apply_plan(graph, {0: [0, 1]}, model, probe=x[:1])


def test_a_model_that_needs_its_full_input_size_is_verified_at_full_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 20 * 20, 10)).eval()
    x = torch.randn(1, 1, 20, 20)
    pruned, report = prune_copy(model, {0: [1, 3]}, x)
    assert report.verified and report.probe_shape[1:] == (1, 20, 20)
    graph = PruningGraph(copy.deepcopy(model), x)
    _sabotage(graph, graph.groups[0])
    with pytest.raises(VerificationError, match="first divergence"):
        apply_plan(graph, {graph.groups[0].index: [1, 3]}, model, probe=x)
