"""Own images reach every method and recovery: shapes inferred, calibration chosen and recorded, BN from it."""
import pytest
import torch

import chanprune
from chanprune.methods import METHODS
from chanprune import L1Config
from chanprune.engine import recalibrate_bn
from tests.conftest import calib, tiny


def _bundle(n=48):
    x, y = calib(n)
    return chanprune.from_tensors(train=(x, y), test=(x[:16], y[:16]))


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m not in ("cacp", "ucp")))  # those two train: tested on their own
def test_every_method_takes_a_tensor_bundle(method):
    from chanprune.cli import method_config

    data = _bundle()
    extra = {"allow_exceed": True} if method == "hierarchical" else {}
    recover = "bn" if method in ("cp", "cap") else "compensate+bn"  # CP and CaP refit the consumers themselves
    cfg = method_config(method, target_macs=0.7, calibration=32, recover=recover, **extra)
    pruned = chanprune.prune(tiny("resnet20"), cfg, data=data)  # no example_inputs: the bundle gives the shape
    assert pruned.chanprune_history[-1]["calibration"]["images"] == 32
    assert chanprune.evaluate(pruned, data)["n"] == 16


@pytest.mark.parametrize("recover", ["bn", "compensate", "compensate+bn"])
def test_images_and_labels_pair_needs_no_example_inputs(recover):
    x, y = calib(16)
    pruned = chanprune.prune(tiny("resnet20"), L1Config(target_macs=0.6, recover=recover), data=(x, y))
    record = pruned.chanprune_history[-1]
    assert pruned(x).shape == (16, 10)
    assert record["calibration"]["images"] == 16
    if "bn" in recover:
        assert record["bn_recalibration"] == {"images": 16, "source": "the calibration images"}


def test_bn_reestimation_uses_exactly_the_calibration_images():
    data = _bundle()
    cfg = L1Config(target_macs=0.6, calibration=[1, 4, 9, 16, 25, 36], recover="bn")
    pruned = chanprune.prune(tiny("resnet20"), cfg, data=data)
    record = pruned.chanprune_history[-1]
    assert record["calibration"]["indices"] == [1, 4, 9, 16, 25, 36]
    # redo the BN re-estimation by hand on those six images: the statistics match exactly
    again = chanprune.prune(tiny("resnet20"), L1Config(target_macs=0.6, calibration=[1, 4, 9, 16, 25, 36]), data=data)
    x, y = data.calibration([1, 4, 9, 16, 25, 36])
    recalibrate_bn(again, [(x, y)], num_batches=1)
    for a, b in zip(pruned.modules(), again.modules()):
        if isinstance(a, torch.nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
            assert torch.allclose(a.running_var, b.running_var, atol=1e-5)


def test_calibration_number_is_a_recorded_stratified_subset():
    data = _bundle()
    record = chanprune.prune(tiny("resnet20"), L1Config(target_macs=0.6, calibration=12), data=data).chanprune_history[-1]
    idx = record["calibration"]["indices"]
    assert len(idx) == 12 and idx == data.calibration_indices(12).tolist()
    assert max(torch.bincount(data.train.labels[idx]).tolist()) <= 3  # spread over the classes
    assert "stratified" in record["calibration"]["source"]


def test_recover_batches_keeps_the_shuffled_training_batches():
    data = _bundle()
    record = chanprune.prune(tiny("resnet20"), L1Config(target_macs=0.6, recover="bn", recover_batches=2, batch_size=16),
                             data=data).chanprune_history[-1]
    assert record["bn_recalibration"] == {"images": 32, "source": "2 shuffled training batches of 16, seed 0"}


@pytest.mark.parametrize("bad", [[], [-1], [1.5], 0])
def test_bad_calibration_refused(bad):
    with pytest.raises(chanprune.ChanpruneError, match="calibration"):
        L1Config(calibration=bad)


def test_out_of_range_indices_name_the_split():
    with pytest.raises(chanprune.ChanpruneError, match=r"0\.\.47"):
        chanprune.prune(tiny("resnet20"), L1Config(calibration=[3, 480]), data=_bundle())


def test_analyze_and_decompose_take_a_pair():
    x, y = calib(16)
    model = tiny("resnet20")
    result = chanprune.analyze(model, (x, y), chanprune.AnalysisConfig(calibration=16))
    assert result.samples == 16
    small = chanprune.decompose(model, chanprune.DecomposeConfig(threshold=0.9), data=(x, y))
    assert small(x).shape == (16, 10)
