"""The cost model predicts Torch-Pruning's own count of the pruned model."""

from chanprune.criteria import RandomConfig
from chanprune.cost import CostModel, count_macs_params
from chanprune.graph import PruningGraph
import chanprune
from tests.conftest import calib, tiny


def test_cost_model_matches_counter(zoo_name):
    model = tiny(zoo_name)
    x, y = calib(4)
    graph = PruningGraph(model, x[:1])
    cost = CostModel(graph)
    assert (cost.macs, cost.params) == count_macs_params(model, x[:1])
    pruned = chanprune.prune(model, RandomConfig(ratio=0.4), data=(x, y), example_inputs=x[:1])
    keep = [g["kept"] for g in pruned.chanprune_history[-1]["groups"]]
    macs, params = cost(keep)
    real_macs, real_params = count_macs_params(pruned, x[:1])
    assert abs(macs - real_macs) / real_macs < 0.01
    assert abs(params - real_params) / real_params < 0.01
