"""Shared fixtures: tiny versions of every zoo model and random calibration data (fast on 2 CPU cores)."""
import pytest
import torch

import chanprune

# Small widths keep each zoo family's structure (residual adds, concat, depthwise) at a fraction of the cost.
TINY_KWARGS = {
    "resnet20": {"width": 0.5},
    "resnet32": {"width": 0.5},
    "resnet56": {"width": 0.5},
    "resnet110": {"width": 0.25},
    "resnet29_bottleneck": {"width": 0.5},
    "resnet38_bottleneck": {"width": 0.25},
    "vgg16_bn": {"width": 0.125},
    "mobilenetv2": {"width_mult": 0.25},
    "densenet40": {"growth_rate": 4, "block_layers": 2},
    "lenet5": {},
}
SIZE = 12


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Tests run in parallel processes (pytest -n 2): one torch thread each avoids oversubscribing the cores."""
    torch.set_num_threads(1)


def tiny(name: str, in_channels: int = 1, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    model = chanprune.create_model(name, num_classes=num_classes, in_channels=in_channels, **TINY_KWARGS.get(name, {}))
    # non-trivial BatchNorm statistics, so masked channels are not accidentally zero
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def calib(n=32, in_channels=1, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(params=sorted(chanprune.list_models()))
def zoo_name(request):
    return request.param


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: the same test runs on the CPU always and on CUDA where present."""
    return torch.device(request.param)
