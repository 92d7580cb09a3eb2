"""recover= is dispatched through the recovery registry; methods that refit their consumers refuse a second refit."""
import pytest

import chanprune
from chanprune import CaPConfig, CPConfig, L1Config
from chanprune.errors import ConfigError
from chanprune.recovery import RECOVERIES, register_recovery
from tests.conftest import calib, tiny


def test_a_registered_recovery_runs_after_the_surgery():
    seen = {}

    @register_recovery("_count", summary="counted")
    def count(ctx):
        seen["params"] = sum(p.numel() for p in ctx.pruned.parameters())
        seen["plan"] = dict(ctx.plan)
        return {"counted": seen["params"]}

    try:
        model = tiny("lenet5")
        x, y = calib(4)
        pruned = chanprune.prune(model, L1Config(ratio=0.5, recover="_count"), data=(x, y), example_inputs=x[:1])
        assert pruned.chanprune_history[-1]["counted"] == sum(p.numel() for p in pruned.parameters()) == seen["params"]
        assert seen["plan"] and all(seen["plan"].values())
    finally:
        del RECOVERIES["_count"]


@pytest.mark.parametrize("cls", [CPConfig, CaPConfig])
@pytest.mark.parametrize("recover", ["compensate", "compensate+bn"])
def test_methods_that_refit_refuse_a_second_refit(cls, recover):
    with pytest.raises(ConfigError, match=f"{cls.__name__} refits the consumers .* use recover='none' or recover='bn'"):
        cls(recover=recover)
    assert cls(recover="bn").recover == "bn"


def test_unknown_recovery_and_missing_training_data():
    with pytest.raises(ConfigError, match="recover must be one of none, bn, compensate, compensate\\+bn"):
        L1Config(recover="retrain")
    x, y = calib(4)
    with pytest.raises(ConfigError, match="re-estimates BatchNorm statistics from shuffled training batches"):
        chanprune.prune(tiny("lenet5"), L1Config(recover="bn", recover_batches=20), data=(x, y), example_inputs=x[:1])
