"""Fixtures for the bench package (``bench/``, importable from the repository root)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sb():
    from bench import scoreboard
    return scoreboard


@pytest.fixture(scope="module")
def report():
    from bench import scoreboard_report
    return scoreboard_report


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A zoo folder in the layout the lead trains into (zoo/<model>_<data>/): a half-width ResNet-20
    briefly trained on sklearn's digits, saved with chanprune.save, and its record.json."""
    import json

    import torch

    import chanprune
    from chanprune.engine import TrainConfig, train

    zoo = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    data = chanprune.load_data("digits")
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.5)
    train(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=64), progress=False, eval_each_epoch=False)
    folder = zoo / "resnet20_digits"
    chanprune.save(model.eval(), folder / "model")
    (folder / "record.json").write_text(json.dumps({"model": "resnet20", "data": "digits",
                                                    "model_kwargs": {"width": 0.5}}))
    return zoo
