"""MACs/params counting, interleaved CPU latency and the combined measure()."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chanprune.errors import ConfigError
from chanprune.measurement import count_macs_params, latency, measure


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def net(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


@pytest.mark.parametrize("n,c,k,h,w", [(8, 3, 3, 10, 10), (5, 2, 1, 7, 9)])
def test_single_conv_macs(n, c, k, h, w):
    conv = nn.Conv2d(c, n, k, padding=k // 2, bias=False)
    macs, params = count_macs_params(conv, torch.randn(1, c, h, w))
    assert macs == n * c * k * k * h * w
    assert params == n * c * k * k
    with_bias = nn.Conv2d(c, n, k, padding=k // 2)
    macs_b, params_b = count_macs_params(with_bias, torch.randn(1, c, h, w))
    assert macs_b == n * c * k * k * h * w + n * h * w and params_b == params + n


def test_count_leaves_model_unchanged():
    model = net(8).train()
    model[3].eval()  # mixed modes must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs, params = count_macs_params(model, torch.randn(1, 1, 8, 8))
    assert macs > 0 and params == sum(p.numel() for p in model.parameters())
    assert model.training and model[0].training and not model[3].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    count_macs_params(model, torch.randn(1, 1, 8, 8))
    assert not any(m.training for m in model.modules())


def test_latency_interleaved_all_models_and_batch_sizes():
    models = {"small": net(4), "dense": net(32).train(), "mid": net(16)}
    res = latency(models, (1, 8, 8), batch_sizes=(1, 4), repeats=4, warmup=1)
    for name in models:
        for bs in (1, 4):
            s = res[name][bs]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
    assert set(res["speedup"]) == {"small", "mid"}  # relative to "dense"
    assert all(res["speedup"][m][bs] > 0 for m in ("small", "mid") for bs in (1, 4))
    assert models["dense"].training  # originals untouched (timing runs on eval copies)
    first = latency({"a": net(4), "b": net(8)}, (1, 8, 8), batch_sizes=(2,), repeats=2, warmup=0, threads=1)
    assert set(first["speedup"]) == {"b"} and set(first["speedup"]["b"]) == {2}
    with pytest.raises(ConfigError):
        latency({}, (1, 8, 8))


class TinyData:
    """Just what measure() needs: example_inputs and a test loader."""

    name = "tiny"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 10, (40,), generator=g)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 1, 8, 8)

    def loader(self, split="test", batch_size=512, shuffle=False, augment=False, seed=0, limit=None, epoch=0):
        n = limit or len(self.y)
        return [(self.x[i:i + batch_size], self.y[i:i + batch_size]) for i in range(0, n, batch_size)]


def test_measure_with_baseline():
    data, dense, small = TinyData(), net(32), net(4)
    res = measure(small, data, baseline=dense, batch_sizes=(1, 8), repeats=3, limit=20)
    assert res["macs"] == count_macs_params(small, data.example_inputs())[0]
    assert res["params"] == sum(p.numel() for p in small.parameters())
    assert 0 <= res["accuracy"] <= 100
    assert set(res["latency_ms"]) == {1, 8} and all(v > 0 for v in res["latency_ms"].values())
    assert set(res["speedup"]) == {1, 8} and all(v > 0 for v in res["speedup"].values())
    assert 0 < res["macs_kept"] < 1 and 0 < res["params_kept"] < 1
    alone = measure(small, data, batch_sizes=(1,), repeats=2, accuracy=False)
    assert alone["accuracy"] is None and "speedup" not in alone


def test_top_level_measure_stays_the_function():
    """Importing the measurement submodule must not replace chanprune.measure (the function)."""
    import importlib

    import chanprune

    importlib.import_module("chanprune.measurement")
    assert callable(chanprune.measure) and chanprune.measure.__name__ == "measure"


def test_latency_in_onnxruntime_and_eager_interleaved():
    models = {"dense": net(16), "small": net(4)}
    res = latency(models, (1, 8, 8), batch_sizes=(1, 3), repeats=3, warmup=1, threads=1, backend=("eager", "onnxruntime"))
    assert res["threads"] == 1
    for b in ("eager", "onnxruntime"):
        for name in models:
            assert set(res[b][name]) == {1, 3}
            assert 0 < res[b][name][3]["p10_ms"] <= res[b][name][3]["median_ms"] <= res[b][name][3]["p90_ms"]
        assert set(res[b]["speedup"]) == {"small"}
    single = latency(models, (1, 8, 8), batch_sizes=(2,), repeats=1, warmup=0, backend="onnxruntime")
    assert set(single) == {"dense", "small", "speedup"}  # one backend: the plain format
    with pytest.raises(ConfigError, match="backend"):
        latency(models, (1, 8, 8), backend="tensorrt")


def test_measure_reports_every_backend():
    data, dense, small = TinyData(), net(32), net(4)
    res = measure(small, data, baseline=dense, batch_sizes=(1,), repeats=2, accuracy=False, backends=("eager", "onnxruntime"),
                  threads=1)
    assert res["threads"] == 1 and set(res["backends"]) == {"eager", "onnxruntime"}
    ort = res["backends"]["onnxruntime"]
    assert ort["latency_ms"][1] > 0 and ort["baseline_latency_ms"][1] > 0 and ort["speedup"][1] > 0
    assert res["latency_ms"] == res["backends"]["eager"]["latency_ms"]  # the top level stays eager's


def test_measure_keeps_eager_when_onnx_refuses():
    class NoOnnx(nn.Module):
        def forward(self, x):
            return torch.linalg.svdvals(x).flatten(1)

    res = measure(NoOnnx(), TinyData(), batch_sizes=(1,), repeats=1, accuracy=False, backends=("eager", "onnxruntime"))
    assert res["latency_ms"][1] > 0
    assert "does not export to ONNX" in res["backends"]["onnxruntime"]["error"]


def test_layer_profile_pairs_the_kernels_of_dense_and_pruned():
    from chanprune.measurement import layer_profile

    dense, small = net(16), net(4)
    res = layer_profile({"dense": dense, "small": small}, (1, 8, 8), batch=4, runs=2)
    convs = [r for r in res["layers"] if r["op"] in ("Conv", "FusedConv", "Gemm")]
    assert len(convs) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in dense.modules())
    for r in convs:
        assert r["dense"]["ms"] >= 0 and r["small"]["ms"] >= 0
        assert r["small"]["executed_macs"] <= r["dense"]["executed_macs"]
    first = convs[0]  # conv 1 → w, 3×3 on 8×8: executed MACs = 64 positions × w × 1 × 9 (padded to the block or not)
    assert first["dense"]["executed_macs"] == 64 * first["dense"]["weight"][0] * 9
    assert res["total_ms"]["dense"] == pytest.approx(sum(r["dense"]["ms"] for r in res["layers"]))
