"""The distributed runtime (2 gloo processes) against the single-process form, and the simulation."""
from __future__ import annotations

import pytest
import torch

import chanprune
from chanprune.errors import ConfigError
from chanprune.partition import PartitionConfig
from chanprune.partition.runtime import Link, PartitionedRun, run_distributed, simulate


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = chanprune.create_model("tinyvgg", num_classes=10, in_channels=1, width=0.25, fc=24).eval()
    return model, torch.randn(6, 1, 28, 28)


@pytest.mark.parametrize("mode", ["block_diagonal", "block_topk"])
def test_two_gloo_processes_equal_the_single_process_form(tmp_path, model_and_input, mode):
    model, x = model_and_input
    cut = chanprune.prune(model, PartitionConfig(parts=2, mode=mode, assignment="energy", budget=0.5),
                          data=(x, torch.zeros(6).long()))
    chanprune.save(cut, tmp_path / "m")
    result = run_distributed(tmp_path / "m", x, timeout_s=30, start_method="fork")
    with torch.no_grad():
        expected = cut(x)
    assert torch.allclose(result.outputs, expected, atol=1e-5)
    assert not torch.allclose(expected, model(x), atol=1e-3)  # the run really is cut


def test_runtime_refuses_a_model_without_partitioned_layers(tmp_path, model_and_input):
    model, x = model_and_input
    chanprune.save(model, tmp_path / "dense")
    with pytest.raises(ConfigError, match="no partitioned Linear layers"):
        run_distributed(tmp_path / "dense", x, start_method="fork")


def test_simulation_adds_link_time_to_the_slowest_chain(model_and_input):
    model, x = model_and_input
    cut = chanprune.prune(model, PartitionConfig(parts=4), data=(x, torch.zeros(6).long()))
    run = PartitionedRun(cut, x[:1])
    feats = torch.randn(6, run.layers[0].in_features)
    slow, instant = Link("slow", 1e6, 1e-3), Link("instant", 1e18, 0.0)
    sim = simulate(run, feats, [slow, instant], repeats=3)
    chain = max(sim["chain_seconds"])
    assert sim["links"]["instant"]["total_s"] == pytest.approx(chain)
    # 3 scatter + 3 gather messages of batch × part floats over the slow link
    expected = sum(slow.seconds(6 * s * 4) for s in run.in_sizes[1:]) + sum(slow.seconds(6 * s * 4) for s in run.out_sizes[1:])
    assert sim["links"]["slow"]["total_s"] == pytest.approx(chain + expected)
    with torch.no_grad():  # the run object reproduces the model's own run
        assert torch.allclose(run.single(feats), torch.nn.Sequential(*run.modules)(feats))


def test_runtime_refuses_a_run_with_a_functional_operation_inside():
    import torch.nn as nn
    import torch.nn.functional as F

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.c(self.b(F.relu(self.a(x))))  # the ReLU is no module: a split would skip it

    torch.manual_seed(0)
    net = Functional().eval()
    x = torch.randn(4, 8)
    cut = chanprune.prune(net, PartitionConfig(parts=2), data=(x, torch.zeros(4).long()))
    with pytest.raises(ConfigError, match="not a plain chain"):
        PartitionedRun(cut, x)


def test_timings_cover_the_model_and_the_run_both_ways(tmp_path, model_and_input):
    model, x = model_and_input
    cut = chanprune.prune(model, PartitionConfig(parts=2), data=(x, torch.zeros(6).long()))
    chanprune.save(cut, tmp_path / "m")
    chanprune.save(model, tmp_path / "dense")
    result = run_distributed(tmp_path / "m", x, rounds=2, baseline=tmp_path / "dense", start_method="fork")
    assert set(result.seconds) == {"single", "distributed", "run_single", "run_distributed", "dense", "run_dense"}
    assert all(v > 0 for v in result.seconds.values())
