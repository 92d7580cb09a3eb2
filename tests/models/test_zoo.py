"""The model zoo: every built-in model builds, forwards at small and CIFAR sizes, and prunes with torch-pruning."""
from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from chanprune.errors import ModelError
from chanprune.models import create_model, list_models, model_info, register_model, registry

BUILTIN = [n for n in list_models() if model_info(n)["builder"].startswith("chanprune.models.")]
# keep the run light on a shared CPU: narrow VGG
SMALL = {"vgg16_bn": {"width": 0.25}}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and avoids OpenMP spin on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _classifier(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _prune_quarter(model: nn.Module, example: torch.Tensor) -> int:
    """Prune the first quarter of every prunable group (classifier kept); return the number of groups pruned."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    pruned = 0
    for group in dg.get_all_groups(ignored_layers=[_classifier(model)], root_module_types=(nn.Conv2d, nn.Linear)):
        k = len(group[0].idxs) // 4
        if k:
            group.prune(idxs=list(range(k)))
            pruned += 1
    return pruned


def test_builtin_names():
    assert set(BUILTIN) == {"resnet20", "resnet32", "resnet56", "resnet110", "resnet29_bottleneck", "resnet38_bottleneck", "vgg16_bn", "mobilenetv2",
                            "densenet40", "lenet5", "tinyvgg"}
    assert list_models() == sorted(list_models())
    for name in BUILTIN:
        info = model_info(name)
        assert info["name"] == name and info["family"] and info["description"]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", BUILTIN)
def test_forward_shapes(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        for size in (8, 28, 32):
            out = model(torch.randn(2, in_channels, size, size))
            assert out.shape == (2, 7)
            assert torch.isfinite(out).all()
    # train mode, backward at the smallest size: BN in training works and gradients reach the first conv
    model.train()
    model(torch.randn(2, in_channels, 8, 8)).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BUILTIN)
def test_structure_rules(name):
    model = create_model(name, **SMALL.get(name, {}))
    assert model.chanprune_spec == {"name": name, "kwargs": {"num_classes": 10, "in_channels": 3,
                                                             **SMALL.get(name, {})}}
    json.dumps(model.chanprune_spec)
    modules = list(model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in modules)
    for m in modules:
        if isinstance(m, nn.Conv2d):
            assert m.bias is None, "convs feeding BN have no bias"
    assert isinstance(_classifier(model), nn.Linear) and _classifier(model).out_features == 10


@pytest.mark.parametrize("name, lo, hi", [
    ("resnet20", 0.26e6, 0.28e6), ("resnet32", 0.45e6, 0.48e6), ("resnet56", 0.84e6, 0.87e6),
    ("resnet110", 1.70e6, 1.76e6), ("vgg16_bn", 14.0e6, 15.5e6), ("mobilenetv2", 2.1e6, 2.4e6),
    ("densenet40", 0.15e6, 0.2e6), ("lenet5", 55e3, 70e3),
])
def test_param_counts(name, lo, hi):
    n = sum(p.numel() for p in create_model(name).parameters())
    assert lo <= n <= hi, n


def test_width_multipliers_scale():
    n1 = sum(p.numel() for p in create_model("resnet20").parameters())
    n2 = sum(p.numel() for p in create_model("resnet20", width=0.5).parameters())
    assert n2 < n1 / 3
    m = create_model("mobilenetv2", width_mult=0.5)
    assert sum(p.numel() for p in m.parameters()) < 2.0e6
    for conv in m.modules():  # depthwise convs stay depthwise
        if isinstance(conv, nn.Conv2d) and conv.groups > 1:
            assert conv.groups == conv.in_channels == conv.out_channels


def test_lenet_without_bn():
    m = create_model("lenet5", in_channels=1, bn=False)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert all(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_name_lists_models():
    with pytest.raises(ModelError) as exc:
        create_model("resnet21")
    msg = str(exc.value)
    assert "resnet21" in msg and "resnet20" in msg and "vgg16_bn" in msg
    with pytest.raises(ModelError):
        model_info("nope")


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 0}, {"num_classes": -1}, {"num_classes": 2.5}, {"num_classes": True},
    {"in_channels": 0}, {"width": 0}, {"width": -1.0}, {"width": float("nan")}, {"width": 1000},
    {"depth": 20},  # not an argument of the builder
    {"width": (1,)},  # not plain JSON (tuple)
])
def test_bad_kwargs(kwargs):
    with pytest.raises(ModelError) as exc:
        create_model("resnet20", **kwargs)
    assert "\n" not in str(exc.value)


def test_bad_kwargs_other_families():
    with pytest.raises(ModelError):
        create_model("lenet5", bn="yes")
    with pytest.raises(ModelError):
        create_model("mobilenetv2", width_mult=0)
    with pytest.raises(ModelError):
        create_model("densenet40", growth_rate=0)


@pytest.fixture
def clean_registry():
    """Remove the models a test registers, so later tests that walk list_models() never see them."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_register_model_rules(clean_registry):
    @register_model("test_zoo_tiny", family="custom")
    class Tiny(nn.Module):
        """A tiny test network."""

        def __init__(self, num_classes=10, in_channels=3, hidden=4):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(hidden)
            self.fc = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.bn(self.conv(x)), 1), 1))

    m = create_model("test_zoo_tiny", num_classes=3, hidden=5)
    assert isinstance(m, Tiny) and m.fc.out_features == 3 and m.conv.out_channels == 5
    assert m.chanprune_spec == {"name": "test_zoo_tiny", "kwargs": {"num_classes": 3, "in_channels": 3, "hidden": 5}}
    assert model_info("test_zoo_tiny")["description"] == "A tiny test network."
    register_model("test_zoo_tiny")(Tiny)  # same builder again: fine

    with pytest.raises(ModelError, match="already registered"):
        @register_model("test_zoo_tiny")
        def other(num_classes=10, in_channels=3):
            return Tiny(num_classes, in_channels)

    with pytest.raises(ModelError):
        register_model("bad name!")
    with pytest.raises(ModelError):
        register_model("")

    @register_model("test_zoo_not_a_module")
    def not_module(num_classes=10, in_channels=3):
        return 42

    with pytest.raises(ModelError, match="not an nn.Module"):
        create_model("test_zoo_not_a_module")


def test_registry_cleaned_up():
    assert not [n for n in list_models() if n.startswith("test_zoo_")]


@pytest.mark.parametrize("name", BUILTIN)
def test_traceable_and_prunable(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, **SMALL.get(name, {})).eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    n_params = sum(p.numel() for p in model.parameters())
    assert _prune_quarter(model, torch.randn(1, 3, 8, 8)) > 0
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert any(after[n] < before[n] for n in before)
    assert sum(p.numel() for p in model.parameters()) < n_params
    assert _classifier(model).out_features == 10
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    with torch.no_grad():
        for size in (8, 32):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
