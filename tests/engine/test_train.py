"""Training, evaluation and BatchNorm recalibration on a tiny conv net and 8x8 digits."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from chanprune.engine import TrainConfig, evaluate, finetune, lr_at, recalibrate_bn, train
from chanprune.errors import ChanpruneError, ConfigError

FAST = dict(batch_size=64, augment=False, device="cpu")


def test_training_lowers_loss_and_beats_chance(digits, make_net):
    model = make_net()
    hist = train(model, digits, TrainConfig(epochs=3, lr=0.2, **FAST), progress=False)
    losses = [e["loss"] for e in hist["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert hist["test_accuracy"] > 50.0  # chance is 10 %
    assert hist["epochs"][-1]["test_acc"] == hist["test_accuracy"]
    assert hist["global_step"] == 3 * hist["steps_per_epoch"]
    assert all(e["time_s"] > 0 for e in hist["epochs"])
    assert not model.training  # left in eval mode, on the training device
    assert next(model.parameters()).device.type == "cpu"


def test_same_seed_gives_bit_identical_weights(digits, make_net, same_weights):
    cfg = TrainConfig(epochs=1, lr=0.05, limit_train=256, **FAST)
    a, b = make_net(), make_net()
    ha = train(a, digits, cfg, progress=False, eval_each_epoch=False)
    hb = train(b, digits, cfg, progress=False, eval_each_epoch=False)
    same_weights(a, b)
    assert ha["epochs"][0]["loss"] == hb["epochs"][0]["loss"]
    c = make_net()
    train(c, digits, TrainConfig(epochs=1, lr=0.05, limit_train=256, seed=1, **FAST), progress=False, eval_each_epoch=False)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_lr_schedule():
    kw = dict(base_lr=0.1, total_steps=100)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(50, **kw) == pytest.approx(0.05)
    assert 0 < lr_at(99, **kw) < 1e-3
    assert [lr_at(s, **kw) for s in range(100)] == sorted((lr_at(s, **kw) for s in range(100)), reverse=True)
    w = dict(base_lr=0.1, total_steps=100, warmup_steps=10)
    assert lr_at(0, **w) == pytest.approx(0.01) and lr_at(9, **w) == pytest.approx(0.1)
    assert lr_at(10, **w) == pytest.approx(0.1)
    assert lr_at(40, schedule="constant", **w) == 0.1


@pytest.mark.parametrize("bad", [
    dict(epochs=-1), dict(lr=0), dict(lr=float("nan")), dict(batch_size=0), dict(schedule="step"),
    dict(momentum=1.5), dict(momentum=0.0), dict(warmup_epochs=5, epochs=2), dict(label_smoothing=1.0),
    dict(limit_train=0), dict(checkpoint_every=-2), dict(device="gpu0"),
])
def test_config_validation(bad):
    with pytest.raises(ConfigError) as exc:
        TrainConfig(**bad)
    msg = str(exc.value)
    assert msg.endswith(".") and msg.count(". ") == 0  # one sentence


def test_finetune_uses_train_machinery(digits, make_net):
    model = make_net()
    hist = finetune(model, digits, epochs=1, lr=0.01, limit_train=128, progress=False, eval_each_epoch=False, **FAST)
    assert hist["config"]["lr"] == 0.01 and hist["config"]["schedule"] == "cosine"
    assert len(hist["epochs"]) == 1 and math.isfinite(hist["test_accuracy"])
    with pytest.raises(ConfigError):
        finetune(model, digits, epochs=1, bogus=3)


class ConstantClass(nn.Module):
    """Always predicts class ``k``."""

    def __init__(self, k: int, num_classes: int = 10) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes, device=x.device) + self.dummy
        out[:, self.k] = 5.0
        return out


def test_evaluate_known_accuracy_and_mode_restored(digits):
    model = ConstantClass(3).train()
    labels = torch.cat([y for _, y in digits.loader("test", batch_size=500)])
    expected = 100.0 * (labels == 3).sum().item() / len(labels)
    res = evaluate(model, digits, batch_size=100)
    assert res["n"] == len(labels)
    assert res["accuracy"] == pytest.approx(expected)
    assert model.training  # restored
    # A plain iterable of batches, truncated by limit.
    x = torch.zeros(10, 1, 8, 8)
    y = torch.tensor([3, 3, 3, 1, 1, 3, 0, 0, 0, 0])
    res = evaluate(model.eval(), [(x[:4], y[:4]), (x[4:], y[4:])], limit=6)
    assert res["n"] == 6 and res["accuracy"] == pytest.approx(100 * 4 / 6)
    assert not model.training
    expected_loss = nn.functional.cross_entropy(model(x[:6]), y[:6]).item()
    assert res["loss"] == pytest.approx(expected_loss)


def test_recalibrate_bn_recovers_running_stats(digits, make_net):
    model = make_net()
    train(model, digits, TrainConfig(epochs=2, lr=0.2, **FAST), progress=False, eval_each_epoch=False)
    good = evaluate(model, digits)["accuracy"]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.running_mean.fill_(10.0)
        bn.running_var.fill_(1e-3)
    broken = evaluate(model, digits)["accuracy"]
    assert broken < good - 20
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model.train()
    n = recalibrate_bn(model, digits, num_batches=8, batch_size=64)
    assert n == 8 * 64
    recovered = evaluate(model, digits)["accuracy"]
    assert recovered >= good - 5
    assert model.training and [bn.momentum for bn in bns] == momenta
    for k, v in weights.items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_train_rejects_non_bundle(make_net):
    with pytest.raises(ChanpruneError):
        train(make_net(), [(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], progress=False)
