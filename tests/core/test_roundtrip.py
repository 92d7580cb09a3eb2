"""A model pruned by chanprune saves and loads bit-identically, with its pruning history."""
import torch

import chanprune
from chanprune.methods.hierarchical import HierarchicalConfig
from chanprune.analysis import AnalysisConfig
from tests.conftest import calib, tiny


def test_pruned_model_round_trip(zoo_name, tmp_path):
    model = tiny(zoo_name)
    x, y = calib(96)
    wide = tuple(n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.shape[0] > 96)
    cfg = HierarchicalConfig(target_macs=0.6, calibration=96, allow_exceed=True, ignored_layers=wide,
                             analysis=AnalysisConfig(reading="gate", threshold=0.95))
    pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
    chanprune.save(pruned, tmp_path / "m", history=pruned.chanprune_history)
    back = chanprune.load(tmp_path / "m")
    assert torch.equal(back(x), pruned.eval()(x))
    spec = chanprune.io.read_spec(tmp_path / "m")
    assert spec["history"][-1]["method"] == "hierarchical"
