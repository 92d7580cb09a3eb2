"""Handlers per config type: lookup along the MRO, families of models, method names for the CLI."""
from dataclasses import dataclass
from typing import ClassVar

import pytest

import chanprune
from chanprune import L1Config
from chanprune.config import PruneConfig
from chanprune.errors import ConfigError
from chanprune.methods import METHODS, register_method
from chanprune.methods import registry
from tests.conftest import calib, tiny


@dataclass
class _TwinConfig(PruneConfig):
    method: ClassVar[str] = "twin"


@dataclass
class _Unregistered(PruneConfig):
    method: ClassVar[str] = "unregistered"


@pytest.fixture
def twin():
    @register_method(_TwinConfig)
    def handler(model, config, data=None, example_inputs=None):
        """A multi-rate method: one pruned model per kept fraction."""
        return {kept: chanprune.prune(model, L1Config(target_macs=kept), data, example_inputs=example_inputs)
                for kept in (0.75, 0.5)}

    yield handler
    del registry._HANDLERS[_TwinConfig]


def test_a_handler_may_return_a_family(twin):
    model = tiny("lenet5")
    x, y = calib(8)
    family = chanprune.prune(model, _TwinConfig(), data=(x, y), example_inputs=x[:1])
    assert set(family) == {0.75, 0.5}
    macs = {k: m.chanprune_history[-1]["macs"]["after"] for k, m in family.items()}
    assert macs[0.5] < macs[0.75]
    assert "twin" in METHODS and METHODS["twin"][0] is _TwinConfig


def test_unregistered_config_is_refused_with_the_known_methods():
    with pytest.raises(ConfigError, match="no method is registered for _Unregistered; known methods: .*hierarchical"):
        chanprune.prune(tiny("lenet5"), _Unregistered(), data=calib(4))


def test_subclass_uses_the_parent_handler_and_names_are_listed():
    @dataclass
    class Mine(L1Config):
        method: ClassVar[str] = "mine"

    assert registry.handler_for(Mine()) is registry.handler_for(L1Config())
    names = set(METHODS)
    assert {"l1", "taylor", "hierarchical", "cp", "cap", "mine"} <= names
    assert "criterion" not in names  # CriterionConfig is generic: its criterion names the method
