"""Verified surgery: pruned == original masked at the removed channels, and a wrong mapping is caught."""
import pytest
import torch

from chanprune.errors import VerificationError
from chanprune.graph import PruningGraph
from chanprune.surgery import apply_plan, prune_copy
import copy
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
