"""Every entry point runs on the device the model is on, keeps the model there and computes its statistics there.

Each test takes the ``device`` fixture (tests/conftest.py): the CPU always, CUDA where present — the same test,
not a second copy. Inputs and calibration data are handed over on the CPU, as a user's DataBundle gives them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import chanprune
from chanprune.analysis import AnalysisConfig, collect
from chanprune.analysis.effective import effective_rank
from chanprune.device import resolve_device, to_device
from chanprune.errors import ConfigError
from chanprune.graph import PruningGraph
from chanprune.recovery import consumer_moments, consumer_rows
from tests.conftest import calib, tiny

SRC = Path(chanprune.__file__).parent


@pytest.fixture(scope="module")
def digits():
    return chanprune.load_data("digits")


def _on(model, device):
    return model.to(device).eval()


def _all_on(model, device):
    places = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
    assert places == {device.type}, f"model has tensors on {places}, expected {device.type}"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None, torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert resolve_device("auto", torch.nn.Linear(2, 2)).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
    x, y = to_device((torch.zeros(2), [torch.ones(1)]), torch.nn.Linear(1, 1))
    assert x.device.type == y[0].device.type == "cpu"


def test_rank_rule_follows_the_spectrum(device):
    lam = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64, device=device)
    assert effective_rank(lam, "energy", 0.75) == 1
    assert effective_rank(lam, "energy", 0.99) == 2


@pytest.mark.parametrize("reading", ["gate", "feature", "consumer_weight", "producer_weight"])
def test_statistics_accumulate_on_the_model_device(device, reading):
    model = _on(tiny("resnet20"), device)
    graph = PruningGraph(model, torch.zeros(1, 1, 12, 12))  # example input on the CPU
    x, y = calib(16)
    stats = collect(model, graph, [(x[:8], y[:8]), (x[8:], y[8:])], reading)
    for s in stats.values():
        assert s.gram.device.type == s.col_sum.device.type == device.type
        assert s.gram.dtype == torch.float64
    _all_on(model, device)


def test_consumer_moments_and_rows_accumulate_on_the_model_device(device):
    from chanprune.recovery.stats import _Accumulator

    model = _on(tiny("vgg16_bn"), device)
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    seen = []
    real_add = _Accumulator.add
    try:
        _Accumulator.add = lambda self, rows: (seen.append((self.gram.device.type, rows.device.type)), real_add(self, rows))[1]
        moments = consumer_moments(model, [name], [calib(8)])
    finally:
        _Accumulator.add = real_add
    assert seen and all(g == r == device.type for g, r in seen)
    assert moments[name].sigma.device.type == "cpu"  # handed to the CPU solvers, by design
    rows = consumer_rows(model, [name], [calib(8)], points_per_image=3)
    assert rows[name].shape[0] == 8 * 3


@pytest.mark.parametrize("method", ["l1", "taylor", "hrank", "hierarchical", "cp", "cap"])
def test_prune_runs_where_the_model_is(device, digits, method):
    from chanprune.cli import method_config

    model = _on(tiny("resnet20"), device)
    extra = {"calibration": 128, "batch_size": 64} if method != "l1" else {}
    if method == "hierarchical":
        extra["allow_exceed"] = True
    recover = "compensate+bn" if method in ("l1", "taylor") else None
    cfg = method_config(method, target_macs=0.6, recover=recover, **extra)
    pruned = chanprune.prune(model, cfg, data=digits, example_inputs=torch.zeros(1, 1, 8, 8))
    _all_on(model, device)
    _all_on(pruned, device)
    assert pruned.chanprune_history[-1]["macs"]["kept"] < 0.75


def test_analyze_evaluate_measure_finetune_decompose_trp_stay_on_device(device, digits):
    model = _on(tiny("resnet20"), device)
    result = chanprune.analyze(model, digits, AnalysisConfig(calibration=64, reading="gate"))
    assert result.grams[0].device.type == device.type
    assert chanprune.evaluate(model, digits, limit=64)["n"] == 64
    _all_on(model, device)
    assert chanprune.measure(model, digits, repeats=1, batch_sizes=(1,), limit=32)["macs"] > 0
    _all_on(model, device)
    chanprune.finetune(model, digits, epochs=1, limit_train=64, batch_size=32, progress=False, eval_each_epoch=False,
                       device="auto" if device.type == "cpu" else str(device))
    _all_on(model, device)
    small = chanprune.decompose(model, chanprune.DecomposeConfig(threshold=0.8), data=digits)
    _all_on(small, device)
    history = chanprune.trp_train(model, digits, chanprune.TRPConfig(period=1),
                                  chanprune.engine.TrainConfig(epochs=1, lr=0.01, batch_size=32, limit_train=64,
                                                               device=str(device)),
                                  progress=False, eval_each_epoch=False)
    assert history["trp"]["projections"] >= 1
    _all_on(model, device)


def test_a_model_split_over_devices_is_named_as_such(monkeypatch):
    """A trace that fails on a device mismatch says so, instead of blaming forward()."""
    import torch_pruning as tp

    def fail(*_a, **_k):
        raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fail)
    with pytest.raises(chanprune.ChanpruneError, match="more than one device"):
        PruningGraph(tiny("lenet5"), torch.zeros(1, 1, 28, 28))


# The statistics passes are where a tensor created on the CPU meets the model's tensors on a GPU. Without a GPU
# that mistake is invisible at run time, so every tensor factory in these modules must name its device.
STATISTICS_MODULES = ["analysis/gradients.py", "analysis/readings.py", "analysis/effective.py", "criteria/data_driven.py",
                      "recovery/stats.py", "lowrank/svd.py", "lowrank/trp.py", "distributed.py", "graph.py", "device.py"]
FACTORIES = {"zeros", "ones", "empty", "full", "eye", "arange", "tensor", "as_tensor", "rand", "randn", "randint",
             "randperm", "linspace"}


@pytest.mark.parametrize("module", STATISTICS_MODULES)
def test_every_tensor_factory_in_the_statistics_passes_names_its_device(module):
    tree = ast.parse((SRC / module).read_text())
    missing = [
        f"{module}:{node.lineno} torch.{node.func.attr}(...)"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
        and not any(k.arg == "device" for k in node.keywords)
    ]
    assert not missing, "tensor factories without device=: " + ", ".join(missing)
