"""Partition pruning (methods.md §6, Verify 1-5): block structure, independence, counts, permutations,
energy, compensation, save/load and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import chanprune
from chanprune.errors import ChanpruneError, ConfigError, LoadError
from chanprune.onnx_export import export
from chanprune.partition import BlockLinear, GroupedConv2d, PartitionConfig, partition


def mlp(seed: int = 0, widths=(12, 10, 8, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def data(n: int = 64, dim: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g)  # correlated inputs, so a refit has something to recover
    return torch.randn(n, dim, generator=g) @ mix, torch.zeros(n, dtype=torch.long)


def _bounds(sizes):
    return [0] + np.cumsum(sizes).tolist()


def test_block_diagonal_layer_is_p_separate_linears_then_concat():
    model, (x, y) = mlp(), data()
    cut = partition(model, PartitionConfig(parts=3, layers=("0",)), (x, y))
    layer = cut[0]
    assert isinstance(layer, BlockLinear) and layer.pairs == [(0, 0), (1, 1), (2, 2)]
    W, b = model[0].weight, model[0].bias
    rb, cb = _bounds(layer.out_sizes), _bounds(layer.in_sizes)
    separate = [nn.Linear(cb[p + 1] - cb[p], rb[p + 1] - rb[p]) for p in range(3)]
    with torch.no_grad():
        for p, lin in enumerate(separate):  # contiguous parts, sliced from the ORIGINAL weights
            lin.weight.copy_(W[rb[p]:rb[p + 1], cb[p]:cb[p + 1]])
            lin.bias.copy_(b[rb[p]:rb[p + 1]])
        expected = torch.cat([lin(x[:, cb[p]:cb[p + 1]]) for p, lin in enumerate(separate)], 1)
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert not torch.allclose(layer(x), model[0](x), atol=1e-3)  # something was cut


def test_no_path_between_parts_of_a_run():
    """∂y_{R_p}/∂x_{C_q} = 0 for p ≠ q across a two-layer run with the energy (permuted) assignment."""
    model, (x, y) = mlp(), data()
    cut = partition(model, PartitionConfig(parts=2, layers=("0", "2"), assignment="energy"), (x, y))
    first, last = cut[0], cut[2]
    assert first.in_index is not None  # the energy assignment did permute the inputs

    def run(v):
        return cut[2](cut[1](cut[0](v)))

    J = torch.autograd.functional.jacobian(run, x[:1] + 1.0)[0, :, 0, :]  # (outputs, inputs)
    cb, rb = _bounds(first.in_sizes), _bounds(last.out_sizes)
    cols = [first.in_index[cb[p]:cb[p + 1]] for p in range(2)]
    rows = [torch.nonzero((last.out_index >= rb[p]) & (last.out_index < rb[p + 1])).flatten() for p in range(2)]
    for p in range(2):
        for q in range(2):
            block = J[rows[p]][:, cols[q]]
            if p == q:
                assert block.abs().sum() > 0
            else:
                assert torch.equal(block, torch.zeros_like(block))


def test_parameter_count_is_sum_of_block_sizes():
    model, (x, y) = mlp(), data()
    cut = partition(model, PartitionConfig(parts=3, layers=("0", "2"), assignment="energy"), (x, y))
    record = cut.chanprune_history[-1]
    removed = 0
    for name in ("0", "2"):
        layer = cut.get_submodule(name)
        blocks = sum(r * c for r, c in zip(layer.out_sizes, layer.in_sizes))
        assert sum(blk.weight.numel() for blk in layer.blocks) == blocks
        removed += model.get_submodule(name).weight.numel() - blocks
    assert record["params"]["before"] - record["params"]["after"] == removed


def test_permuting_neurons_before_the_cut_leaves_the_function_unchanged():
    """Energy assignment, every block kept (block_topk with the whole budget): only the permutation acts."""
    model, (x, y) = mlp(), data()
    cut = partition(model, PartitionConfig(parts=3, layers=("0", "2"), mode="block_topk", budget=1.0,
                                           assignment="energy"), (x, y))
    assert cut[0].in_index is not None and len(cut[0].pairs) == 9
    with torch.no_grad():
        assert torch.allclose(cut(x), model(x), atol=1e-5)


def test_permuted_batchnorm_between_grouped_convs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(16, 3, 6, 6)
    cut = partition(net, PartitionConfig(parts=2, layers=("3", "6"), assignment="energy"), (x, torch.zeros(16).long()))
    assert isinstance(cut[3], GroupedConv2d) and cut[3].conv.groups == 2
    masked = partition(net, PartitionConfig(parts=2, layers=("3", "6")), (x, torch.zeros(16).long()))
    # contiguous: the grouped convs equal the dense convs with the off-diagonal channel blocks zeroed
    ref = __import__("copy").deepcopy(net)
    with torch.no_grad():
        ref[3].weight[:4, 4:] = 0
        ref[3].weight[4:, :4] = 0
        ref[6].weight[:2, 4:] = 0
        ref[6].weight[2:, :4] = 0
        assert torch.allclose(masked(x), ref(x), atol=1e-5)
    rec = cut.chanprune_history[-1]["partition"]
    assert rec["energy_diagonal"] >= rec["energy_diagonal_contiguous"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_keeps_at_least_the_energy_of_contiguous(seed):
    model, (x, y) = mlp(seed, widths=(16, 12, 12, 3)), data(dim=16)
    contiguous = partition(model, PartitionConfig(parts=4, layers=("0", "2")), (x, y)).chanprune_history[-1]["partition"]
    energy = partition(model, PartitionConfig(parts=4, layers=("0", "2"), assignment="energy"), (x, y))
    energy = energy.chanprune_history[-1]["partition"]
    # contiguous energy from the original weights directly: parts of 4, 3, 3, 3 (16 inputs: 4 each)
    W0, W2 = model[0].weight.detach() ** 2, model[2].weight.detach() ** 2
    direct = sum(float(W0[3 * p:3 * p + 3, 4 * p:4 * p + 4].sum() + W2[3 * p:3 * p + 3, 3 * p:3 * p + 3].sum())
                 for p in range(4))
    assert contiguous["energy_diagonal"] == pytest.approx(direct, rel=1e-6)
    assert energy["energy_diagonal"] > contiguous["energy_diagonal"]  # random weights: strictly better


def test_compensation_refits_each_block_from_its_own_inputs():
    model, (x, y) = mlp(), data(n=256)
    plain = partition(model, PartitionConfig(parts=3, layers=("0",)), (x, y))
    comp = partition(model, PartitionConfig(parts=3, layers=("0",), recover="compensate", ridge=0.0,
                                            calibration=256), (x, y))
    with torch.no_grad():
        target = model[0](x)
        err_plain = (plain[0](x) - target).pow(2).mean()
        err_comp = (comp[0](x) - target).pow(2).mean()
        assert err_comp < 0.9 * err_plain
        # still block-diagonal: the refit used only each block's own inputs
        assert comp[0].pairs == [(0, 0), (1, 1), (2, 2)]


def test_balanced_keeps_equal_nonzeros_per_device():
    model, (x, y) = mlp(), data()
    cut = partition(model, PartitionConfig(parts=2, layers=("0", "2"), mode="balanced"), (x, y))
    layer = cut[0]
    per_device = [sum(int(getattr(layer, f"mask{i}").sum()) for i, (p, _) in enumerate(layer.pairs) if p == r)
                  for r in range(2)]
    assert per_device == [r * c for r, c in zip(layer.out_sizes, layer.in_sizes)]


def test_prune_registry_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = chanprune.create_model("tinyvgg", num_classes=10, in_channels=1, width=0.25, fc=16).eval()
    x = torch.randn(8, 1, 28, 28)
    for cfg in (PartitionConfig(parts=2, mode="balanced", assignment="energy", recover="compensate"),
                PartitionConfig(parts=2, layers=("features.7", "features.10"), assignment="energy")):
        cut = chanprune.prune(model, cfg, data=(x, torch.zeros(8).long()))
        chanprune.save(cut, tmp_path / "m", history=cut.chanprune_history)
        back = chanprune.load(tmp_path / "m")
        with torch.no_grad():
            assert torch.equal(back(x), cut.eval()(x))
        kinds = {type(m).__name__ for m in back.modules()}
        assert kinds & {"BlockLinear", "GroupedConv2d"}
    spec = json.loads((tmp_path / "m.json").read_text())
    spec["layers"]["features.7"]["conv"]["groups"] = 3  # does not divide 4 channels
    (tmp_path / "m.json").write_text(json.dumps(spec))
    with pytest.raises(LoadError):
        chanprune.load(tmp_path / "m")


@pytest.mark.parametrize("cfg, words", [
    (dict(parts=20, layers=("0",)), "larger than"),
    (dict(parts=3, layers=("0",)), None),  # Linear parts need not be equal
    (dict(parts=3, layers=("c",)), "does not divide"),
    (dict(parts=2, layers=("c",), mode="block_topk"), "grouped convolutions"),
    (dict(parts=2, layers=("0", "l")), "not consecutive"),
    (dict(parts=2, layers=("nope",)), "no layer named"),
])
def test_bad_input_is_one_sentence(cfg, words):
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("c", nn.Conv2d(4, 4, 1))
    net.add_module("f", nn.Flatten())
    net.add_module("0", nn.Linear(16, 12))
    net.add_module("r", nn.ReLU())
    net.add_module("m", nn.Linear(12, 12))
    net.add_module("l", nn.Linear(12, 3))
    x = torch.randn(4, 4, 2, 2)
    if words is None:
        partition(net, PartitionConfig(**cfg), (x, torch.zeros(4).long()))
        return
    with pytest.raises(ChanpruneError) as err:
        partition(net, PartitionConfig(**cfg), (x, torch.zeros(4).long()))
    message = str(err.value)
    assert words in message and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("kwargs", [dict(parts=0), dict(mode="diagonal"), dict(assignment="spectral"), dict(budget=2.0)])
def test_config_validates_itself(kwargs):
    with pytest.raises(ConfigError):
        PartitionConfig(**kwargs)


def test_partitioned_models_export_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = chanprune.create_model("tinyvgg", num_classes=10, in_channels=1, width=0.25, fc=16).eval()
    x = torch.randn(8, 1, 28, 28)
    # gathers, masked blocks and several blocks per row part: every operation the partitioned forms use
    cut = chanprune.prune(model, PartitionConfig(parts=2, mode="balanced", assignment="energy"), data=(x, torch.zeros(8).long()))
    export(cut, tmp_path / "m.onnx", x[:1])  # refuses unless onnxruntime matches PyTorch
    assert (tmp_path / "m.onnx").stat().st_size > 0
