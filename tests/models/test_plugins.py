"""Models from outside the zoo: installed packages register through the chanprune.models entry-point group."""
import sys

import torch

import chanprune
from chanprune.models import registry

PLUGIN = '''
import torch.nn as nn


def plugnet(num_classes=10, in_channels=1, width=4):
    """A one-conv plugin model."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
'''


def test_entry_point_registers_a_model(tmp_path, monkeypatch):
    (tmp_path / "plugpkg.py").write_text(PLUGIN)
    dist = tmp_path / "plugpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[chanprune.models]\nplugnet = plugpkg:plugnet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.delitem(registry._REGISTRY, "plugnet", raising=False)
    try:
        assert "plugnet" in chanprune.list_models()
        model = chanprune.create_model("plugnet", num_classes=3, in_channels=1)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
        chanprune.save(model, tmp_path / "m")
        assert chanprune.load(tmp_path / "m")(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    finally:
        registry._REGISTRY.pop("plugnet", None)
        sys.modules.pop("plugpkg", None)
