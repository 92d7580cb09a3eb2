"""Registering a criterion creates its config; CriterionConfig takes any registered criterion by name."""
import pytest
import torch

import chanprune
from chanprune.criteria import CONFIGS, CRITERIA, CriterionConfig, L1Config, register_criterion
from chanprune.errors import ConfigError
from chanprune.methods import METHODS
from tests.conftest import calib, tiny


def test_every_registered_config_is_exported_and_named():
    assert set(CONFIGS) <= set(CRITERIA)
    for name, cls in CONFIGS.items():
        assert issubclass(cls, CriterionConfig) and cls().criterion == name
        assert getattr(chanprune, cls.__name__) is cls
        assert METHODS[name][0] is cls


def test_criterion_config_prunes_like_the_named_config():
    model = tiny("lenet5")
    x, y = calib(8)
    a = chanprune.prune(model, CriterionConfig(criterion="l1", target_macs=0.5), data=(x, y), example_inputs=x[:1])
    b = chanprune.prune(model, L1Config(target_macs=0.5), data=(x, y), example_inputs=x[:1])
    assert [g["kept"] for g in a.chanprune_history[-1]["groups"]] == [g["kept"] for g in b.chanprune_history[-1]["groups"]]
    assert torch.equal(a(x), b(x))


def test_a_new_criterion_gets_a_config_that_prunes():
    @register_criterion("_last_first", config="_LastFirstConfig", doc="Remove the first channels (a test).")
    def last_first(group, ctx):
        return torch.arange(group.channels, dtype=torch.float64)

    try:
        cls = CONFIGS["_last_first"]
        assert cls.__name__ == "_LastFirstConfig" and cls.__doc__.startswith("Remove the first")
        model = tiny("lenet5")
        x, y = calib(4)
        pruned = chanprune.prune(model, cls(ratio=0.5), data=(x, y), example_inputs=x[:1])
        assert pruned.chanprune_history[-1]["method"] == "_last_first"
        assert "_last_first" in METHODS
    finally:
        del CRITERIA["_last_first"], CONFIGS["_last_first"]


def test_bad_criterion_names_are_one_sentence():
    with pytest.raises(ConfigError, match="unknown criterion 'nope'; choose one of"):
        CriterionConfig(criterion="nope")
    with pytest.raises(ConfigError, match="L1Config scores by 'l1'; for 'l2' use L2Config"):
        L1Config(criterion="l2")
