"""on_mismatch="exclude": a group whose surgery fails verification is dropped (with a warning), the rest is
pruned and verified; the caller's model is untouched in every path. Also: a removal that did nothing is caught."""
from __future__ import annotations

import copy

import pytest
import torch

import chanprune
from chanprune.errors import ConfigError, VerificationError
from chanprune.graph import PruningGraph
from chanprune.surgery import apply_plan, prune_copy
from tests.conftest import calib, tiny

CONV2 = "features.5"  # lenet5: group rooted at the second conv; its consumer is classifier.0 (flatten → Linear)
FC1 = "classifier.0"


@pytest.fixture
def model():
    return tiny("lenet5")


@pytest.fixture
def x():
    return calib(4)[0]


def _sabotage(monkeypatch, *, when: set[str]):
    """After every removal whose plan touches all groups named in ``when``, shift the input columns of
    the first consumer of the last of them: a wrong index mapping, as a graph library bug would make it."""
    real = PruningGraph.remove

    def remove(self, plan):
        real(self, plan)
        names = {self.groups[g].name for g in plan}
        self._planned = getattr(self, "_planned", set()) | names
        if when <= self._planned and names & when:
            consumer = next(g for g in self.groups if g.name == sorted(when)[-1]).consumers[0].module
            with torch.no_grad():
                consumer.weight.copy_(consumer.weight.roll(1, dims=1))

    monkeypatch.setattr(PruningGraph, "remove", remove)


def _index(model, x, name):
    return next(g.index for g in PruningGraph(copy.deepcopy(model), x[:1]).groups if g.name == name)


def _unchanged(model):
    ref = tiny("lenet5")
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_default_raises_and_names_the_layer(model, x, monkeypatch):
    _sabotage(monkeypatch, when={CONV2})
    g2, g1 = _index(model, x, CONV2), _index(model, x, FC1)
    with pytest.raises(VerificationError, match=f"first divergence at '{FC1}'"):
        prune_copy(model, {g2: [0, 3], g1: [5]}, x[:1])
    assert _unchanged(model)


def test_exclude_drops_the_sabotaged_group_and_verifies_the_rest(model, x, monkeypatch):
    _sabotage(monkeypatch, when={CONV2})
    g2, g1 = _index(model, x, CONV2), _index(model, x, FC1)
    with pytest.warns(UserWarning, match=rf"excluded 1 group\(s\).*'{CONV2}'"):
        pruned, report = prune_copy(model, {g2: [0, 3], g1: [5]}, x[:1], on_mismatch="exclude")
    assert [e["name"] for e in report.excluded] == [CONV2]
    assert "first divergence" in report.excluded[0]["reason"]
    assert report.removed == {g1: [5]} and report.verified and report.max_rel_error < 1e-5
    mods = dict(pruned.named_modules())
    assert mods[CONV2].out_channels == 16 and mods[FC1].out_features == 119
    assert _unchanged(model)


def test_exclude_when_groups_fail_only_together(model, x, monkeypatch):
    """Each group verifies alone, the pair does not: groups are added one at a time, the second is dropped."""
    _sabotage(monkeypatch, when={CONV2, FC1})
    g2, g1 = _index(model, x, CONV2), _index(model, x, FC1)
    plan = {g1: [5], g2: [0, 3]}
    with pytest.warns(UserWarning, match="excluded 1 group"):
        _, report = prune_copy(model, plan, x[:1], on_mismatch="exclude")
    assert len(report.excluded) == 1 and "fails together" in report.excluded[0]["reason"]
    assert len(report.removed) == 1 and report.verified
    assert _unchanged(model)


def test_removal_that_did_nothing_is_caught(model, x, monkeypatch):
    monkeypatch.setattr(PruningGraph, "remove", lambda self, plan: None)
    g2 = _index(model, x, CONV2)
    with pytest.raises(VerificationError, match=f"did not take effect as planned on layer '{CONV2}'"):
        prune_copy(model, {g2: [1]}, x[:1])
    with pytest.warns(UserWarning, match="excluded 1 group"):
        pruned, report = prune_copy(model, {g2: [1]}, x[:1], on_mismatch="exclude")
    assert report.removed == {} and dict(pruned.named_modules())[CONV2].out_channels == 16
    assert _unchanged(model)


def test_prune_config_threads_on_mismatch(model, x, monkeypatch):
    data = calib(16)
    _sabotage(monkeypatch, when={CONV2})
    with pytest.raises(VerificationError):
        chanprune.prune(model, chanprune.L1Config(ratio=0.5, calibration=16), data=data, example_inputs=x[:1])
    assert _unchanged(model)
    with pytest.warns(UserWarning, match=f"'{CONV2}'"):
        pruned = chanprune.prune(model, chanprune.L1Config(ratio=0.5, calibration=16, on_mismatch="exclude"),
                                 data=data, example_inputs=x[:1])
    record = pruned.chanprune_history[-1]
    assert [e["name"] for e in record["excluded_groups"]] == [CONV2]
    assert record["verified"] and record["config"]["on_mismatch"] == "exclude"
    kept = {g["name"]: (g["channels"], g["kept"]) for g in record["groups"]}
    assert kept[CONV2] == (16, 16) and kept[FC1][1] < 120
    assert _unchanged(model)


def test_on_mismatch_is_validated(model, x):
    with pytest.raises(ConfigError, match="on_mismatch"):
        chanprune.L1Config(on_mismatch="ignore")
    graph = PruningGraph(copy.deepcopy(model), x[:1])
    with pytest.raises(ConfigError, match="on_mismatch"):
        apply_plan(graph, {0: [1]}, model, on_mismatch="skip")
