"""Latency-aware rounding (round_to="auto"): block fitting keeps the plan and the target; prune records its table."""
import pytest

import chanprune
from chanprune.config import PruneConfig
from chanprune.cost import CostModel
from chanprune.errors import ConfigError
from chanprune.graph import PruningGraph
from chanprune.rounding import LOWER_SLACK, fit_blocks

from tests.conftest import calib, tiny


@pytest.fixture(scope="module")
def resnet_cost():
    model = tiny("resnet20")
    return CostModel(PruningGraph(model, calib(1)[0]))


@pytest.mark.parametrize("q,target", [(4, 0.5), (4, 0.7), (8, 0.7)])
def test_fit_blocks_stays_near_the_plan_and_meets_the_target(resnet_cost, q, target):
    channels = resnet_cost.graph.widths()
    from chanprune import allocation as alloc

    planned = alloc.search(alloc.uniform(channels), resnet_cost, target).keep
    keep = fit_blocks(planned, channels, q, resnet_cost, ("macs", target), 0.01)
    assert keep is not None
    ratio = resnet_cost.kept(keep, "macs")
    assert target * (1 - LOWER_SLACK) <= ratio <= target * 1.01
    assert all(abs(k - p) <= q for k, p in zip(keep, planned))
    assert all(k % q == 0 or k == n for k, n in zip(keep, channels))
    assert all(1 <= k <= n for k, n in zip(keep, channels))


def test_fit_blocks_of_one_is_the_plan(resnet_cost):
    channels = resnet_cost.graph.widths()
    planned = [max(1, n // 2 + 1) for n in channels]
    assert fit_blocks(planned, channels, 1, resnet_cost, ("macs", 0.5), 0.01) == planned


def test_prune_with_auto_rounding_records_its_measured_choice():
    x, y = calib(16)
    pruned = chanprune.prune(tiny("resnet20"), chanprune.L1Config(target_macs=0.5, round_to="auto"), data=(x, y),
                             example_inputs=x[:1])
    rec = pruned.chanprune_history[-1]
    table = rec["latency_rounding"]
    assert table["backend"] == "onnxruntime" and table["batch"] == 32 and table["threads"] == 1
    chosen = table["table"][str(table["chosen"])]
    assert [g["kept"] for g in rec["groups"]] == chosen["keep"]
    assert chosen["ms"] == min(v["ms"] for v in table["table"].values())
    assert rec["macs"]["kept"] <= 0.5 * 1.01 + 1e-9 and rec["verified"]
    assert "1" in table["table"]  # the plain allocation is always a candidate


def test_round_to_accepts_auto_and_refuses_other_words():
    assert PruneConfig(round_to="auto").round_to == "auto"
    with pytest.raises(ConfigError, match="'auto'"):
        PruneConfig(round_to="fast")
