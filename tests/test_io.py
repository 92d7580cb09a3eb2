"""Pickle-free save/load: bit-identical round trips (pruned or not), corrupt files, atomic overwrite."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch_pruning as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from chanprune import io
from chanprune.errors import LoadError, ModelError
from chanprune.models import create_model, list_models, model_info, register_model, registry

BUILTIN = [n for n in list_models() if model_info(n)["builder"].startswith("chanprune.models.")]
SMALL = {"vgg16_bn": {"width": 0.25}, "mobilenetv2": {"width_mult": 0.5}}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and avoids OpenMP spin on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers

def _classifier(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _prune(model: nn.Module, example: torch.Tensor, fraction=0.25, seed=None) -> nn.Module:
    """Prune ``fraction`` of every prunable group's channels directly with torch-pruning (classifier kept).

    ``seed=None`` prunes the first indices, otherwise random ones.
    """
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for group in dg.get_all_groups(ignored_layers=[_classifier(model)], root_module_types=(nn.Conv2d, nn.Linear)):
        n = len(group[0].idxs)
        k = min(int(n * fraction), n - 1)
        if k <= 0:
            continue
        idxs = list(range(k)) if gen is None else torch.randperm(n, generator=gen)[:k].tolist()
        group.prune(idxs=idxs)
    return model


def _scramble_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial running stats and counters so a round trip has something to lose."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _assert_same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a.eval()
    b.eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert io.spec_from_model(a) == io.spec_from_model(b)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _rewrite_json(stem: Path, fn) -> None:
    jp = stem.with_suffix(".json")
    doc = json.loads(jp.read_text())
    fn(doc)
    jp.write_text(json.dumps(doc))


def _forge_weights(stem: Path, fn) -> None:
    """Rewrite the weights with ``fn(tensors)`` and make the JSON's hash and tensor table agree with them."""
    st_path = stem.with_suffix(".safetensors")
    tensors = safetensors.torch.load_file(str(st_path))
    fn(tensors)
    safetensors.torch.save_file(tensors, str(st_path))
    data = st_path.read_bytes()

    def fix(doc):
        doc["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
        doc["weights"]["bytes"] = len(data)
        doc["tensors"] = {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                          for k, t in tensors.items()}

    _rewrite_json(stem, fix)


@pytest.fixture
def saved(tmp_path):
    """A saved, pruned resnet20 (half width) and its stem."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5)
    _scramble_stats(_prune(model, torch.randn(1, 3, 8, 8)))
    stem = tmp_path / "m" / "model"
    io.save(model, stem, history=[{"step": 1, "removed": 3}], extra={"acc": 0.5})
    return model, stem


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("name", BUILTIN)
def test_round_trip_bit_identical(tmp_path, name, pruned):
    torch.manual_seed(0)
    in_ch = 1 if name in ("lenet5", "densenet40") else 3
    model = create_model(name, num_classes=7, in_channels=in_ch, **SMALL.get(name, {}))
    if pruned:
        _prune(model, torch.randn(1, in_ch, 8, 8))
    _scramble_stats(model)
    json_path = io.save(model, tmp_path / "run" / name)
    assert json_path == tmp_path / "run" / f"{name}.json"
    assert (tmp_path / "run" / f"{name}.safetensors").is_file()
    loaded = io.load(tmp_path / "run" / name)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.chanprune_spec == model.chanprune_spec
    _assert_same_model(model, loaded, torch.randn(2, in_ch, 28, 28))
    if pruned and name == "mobilenetv2":  # depthwise convs: groups shrank with the channels and were restored
        dw = [(n, m.groups) for n, m in loaded.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        original = create_model(name, **SMALL[name])
        assert dw and all(g == loaded.get_submodule(n).in_channels for n, g in dw)
        assert any(g < original.get_submodule(n).groups for n, g in dw)


def test_load_accepts_stem_or_either_file(saved):
    model, stem = saved
    x = torch.randn(2, 3, 16, 16)
    for p in (stem, str(stem), stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
        _assert_same_model(model, io.load(p, map_location=torch.device("cpu")), x)


def test_spec_layout(saved):
    model, stem = saved
    spec = io.read_spec(stem)
    assert set(spec) == {"format", "version", "name", "kwargs", "layers", "history", "extra", "weights", "tensors",
                         "chanprune_version"}
    assert spec["format"] == "chanprune-model" and spec["version"] == 1 and spec["name"] == "resnet20"
    assert spec["kwargs"] == {"num_classes": 10, "in_channels": 3, "width": 0.5}
    assert spec["history"] == [{"step": 1, "removed": 3}] and spec["extra"] == {"acc": 0.5}
    data = stem.with_suffix(".safetensors").read_bytes()
    assert spec["weights"] == {"file": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data)}
    sd = model.state_dict()
    assert spec["tensors"] == {k: {"shape": list(v.shape), "dtype": str(v.dtype)[6:]} for k, v in sd.items()}
    assert spec["layers"]["conv1"] == {
        "type": "Conv2d", "in_channels": 3, "out_channels": model.conv1.out_channels, "kernel_size": [3, 3],
        "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bias": False, "padding_mode": "zeros"}
    assert model.conv1.out_channels == 6  # 8 channels at width 0.5, a quarter pruned
    assert spec["layers"]["bn1"]["type"] == "BatchNorm2d" and spec["layers"]["bn1"]["num_features"] == 6
    assert spec["layers"]["fc"] == {"type": "Linear", "in_features": model.fc.in_features, "out_features": 10,
                                    "bias": True}
    assert io.spec_from_model(model) == spec["layers"]


def test_save_stem_with_suffix_and_dots(tmp_path):
    model = create_model("lenet5", in_channels=1)
    assert io.save(model, tmp_path / "a.json") == tmp_path / "a.json"
    assert io.save(model, tmp_path / "b.safetensors") == tmp_path / "b.json"
    assert io.save(model, tmp_path / "model.v2") == tmp_path / "model.v2.json"
    assert (tmp_path / "model.v2.safetensors").is_file()
    io.load(tmp_path / "model.v2")


def test_load_leaves_rng_alone(saved):
    _, stem = saved
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    io.load(stem)
    assert torch.equal(torch.rand(3), a)


def test_half_precision_round_trip(tmp_path):
    model = _scramble_stats(create_model("resnet20", width=0.25)).half()
    io.save(model, tmp_path / "h")
    loaded = io.load(tmp_path / "h")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["resnet20", "lenet5", "densenet40"]), fraction=st.floats(0.05, 0.9),
       seed=st.integers(0, 2 ** 16))
def test_random_pruning_round_trip(tmp_path_factory, name, fraction, seed):
    torch.manual_seed(seed)
    kw = {"growth_rate": 4, "block_layers": 2} if name == "densenet40" else {"width": 0.5} if name == "resnet20" else {}
    model = create_model(name, in_channels=1, **kw)
    _scramble_stats(_prune(model, torch.randn(1, 1, 8, 8), fraction=fraction, seed=seed), seed)
    stem = tmp_path_factory.mktemp("h") / "m"
    io.save(model, stem)
    _assert_same_model(model, io.load(stem), torch.randn(2, 1, 12, 12))


# --------------------------------------------------------------------------- user models

class UserNet(nn.Module):
    """A user-defined model, registered only while a test uses it (see ``usernet``)."""

    def __init__(self, num_classes=10, in_channels=3, hidden=12, norm="group"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding="same", bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.norm = nn.GroupNorm(1, hidden) if norm == "group" else nn.BatchNorm2d(hidden)
        self.fc1 = nn.Linear(hidden, 16)
        self.bn1d = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.norm(self.dw(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(torch.relu(self.bn1d(self.fc1(x))))


@pytest.fixture
def usernet():
    saved = dict(registry._REGISTRY)
    register_model("test_io_usernet", family="custom", description="user model for the io tests")(UserNet)
    yield "test_io_usernet"
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_user_model_round_trip(tmp_path, usernet):
    torch.manual_seed(0)
    model = create_model(usernet, num_classes=4, in_channels=2, hidden=12)
    _prune(model, torch.randn(2, 2, 8, 8), fraction=0.5)
    assert model.conv.out_channels == 6 and model.dw.groups == 6 and model.fc1.out_features == 8
    _scramble_stats(model)
    io.save(model, tmp_path / "user")
    loaded = io.load(tmp_path / "user")
    assert isinstance(loaded, UserNet)
    registry._REGISTRY.pop(usernet)
    with pytest.raises(LoadError, match="import the module that registers it"):
        io.load(tmp_path / "user")
    _assert_same_model(model, loaded, torch.randn(3, 2, 9, 9))
    layers = io.read_spec(tmp_path / "user")["layers"]
    assert layers["conv"]["padding"] == "same" and layers["norm"]["type"] == "GroupNorm"
    assert layers["bn1d"]["type"] == "BatchNorm1d" and layers["bn1d"]["num_features"] == 8


def test_model_without_spec_cannot_be_saved(tmp_path):
    with pytest.raises(ModelError) as exc:
        io.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x")
    assert str(exc.value) == ("model has no chanprune spec; create it with chanprune.create_model or register "
                              "your class with chanprune.register_model")
    assert list(tmp_path.iterdir()) == []


def test_non_json_history_writes_nothing(tmp_path):
    model = create_model("lenet5")
    with pytest.raises(ModelError):
        io.save(model, tmp_path / "x", extra={"t": torch.zeros(1)})
    with pytest.raises(ModelError):
        io.save(model, tmp_path / "x", history=[1, 2])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- corrupt files

def _truncate(stem):
    p = stem.with_suffix(".safetensors")
    p.write_bytes(p.read_bytes()[:-100])


def _flip_byte(stem):
    p = stem.with_suffix(".safetensors")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _json_text(text):
    return lambda stem: stem.with_suffix(".json").write_text(text)


def _edit(fn):
    return lambda stem: _rewrite_json(stem, fn)


def _forge(fn):
    return lambda stem: _forge_weights(stem, fn)


def _set(doc, keys, value):
    for k in keys[:-1]:
        doc = doc[k]
    doc[keys[-1]] = value


CORRUPTIONS = {
    "truncated safetensors": (_truncate, "modified or truncated"),
    "flipped byte": (_flip_byte, "modified or truncated"),
    "empty safetensors": (lambda s: s.with_suffix(".safetensors").write_bytes(b""), "modified or truncated"),
    "weights file missing": (lambda s: s.with_suffix(".safetensors").unlink(), "missing"),
    "invalid JSON text": (_json_text('{"format": "chanprune-model", "version": 1,'), "not valid JSON"),
    "JSON not UTF-8": (lambda s: s.with_suffix(".json").write_bytes(b"\xff\xfe{}"), "not valid JSON"),
    "JSON is a list": (_json_text("[1, 2]"), "must be a JSON object"),
    "duplicate JSON key": (_json_text('{"format": "chanprune-model", "format": "x"}'), "duplicate key"),
    "unknown top-level field": (_edit(lambda d: d.update(evil="x")), "unknown field 'evil'"),
    "missing top-level field": (_edit(lambda d: d.pop("layers")), "missing field 'layers'"),
    "wrong format": (_edit(lambda d: d.update(format="other")), "not a chanprune model file"),
    "newer version": (_edit(lambda d: d.update(version=2)), "upgrade chanprune"),
    "version as string": (_edit(lambda d: d.update(version="1")), "version"),
    "kwargs not a dict": (_edit(lambda d: d.update(kwargs=[1])), "kwargs"),
    "negative num_classes": (_edit(lambda d: _set(d, ["kwargs", "num_classes"], -3)), "num_classes"),
    "unknown builder kwarg": (_edit(lambda d: _set(d, ["kwargs", "depth"], 3)), "cannot be built"),
    "name not in registry": (_edit(lambda d: d.update(name="resnet999")), "not registered"),
    "unknown layer field": (_edit(lambda d: _set(d, ["layers", "conv1", "hook"], "os.system")), "unknown field"),
    "unsupported layer type": (_edit(lambda d: _set(d, ["layers", "conv1", "type"], "Lambda")), "unsupported type"),
    "layer type differs": (_edit(lambda d: d["layers"].update(
        conv1={"type": "Linear", "in_features": 3, "out_features": 6, "bias": False})), "is a Linear in the spec"),
    "layer does not exist": (_edit(lambda d: d["layers"].update(ghost=d["layers"]["conv1"])), "does not exist"),
    "absurd channel count": (_edit(lambda d: _set(d, ["layers", "conv1", "out_channels"], 10 ** 7)), "out_channels"),
    "negative channel count": (_edit(lambda d: _set(d, ["layers", "bn1", "num_features"], -1)), "num_features"),
    "bool channel count": (_edit(lambda d: _set(d, ["layers", "fc", "in_features"], True)), "in_features"),
    "bias not a bool": (_edit(lambda d: _set(d, ["layers", "fc", "bias"], "yes")), "bias"),
    "groups do not divide": (_edit(lambda d: _set(d, ["layers", "conv1", "groups"], 4)), "groups"),
    "bad kernel list": (_edit(lambda d: _set(d, ["layers", "conv1", "kernel_size"], [3])), "kernel_size"),
    "negative eps": (_edit(lambda d: _set(d, ["layers", "bn1", "eps"], -1.0)), "eps"),
    "layer shape not matching tensors": (_edit(lambda d: _set(d, ["layers", "conv1", "out_channels"], 5)),
                                         "'conv1.weight'"),
    "tensor table shape not matching": (_edit(lambda d: _set(d, ["tensors", "fc.weight", "shape"], [10, 1])),
                                        "'fc.weight'"),
    "tensor table dtype not matching": (_edit(lambda d: _set(d, ["tensors", "fc.bias", "dtype"], "float16")),
                                        "'fc.bias'"),
    "tensor table unknown dtype": (_edit(lambda d: _set(d, ["tensors", "fc.bias", "dtype"], "object")), "dtype"),
    "weights path escapes folder": (_edit(lambda d: _set(d, ["weights", "file"], "../model.safetensors")),
                                    "plain file name"),
    "sha not hex": (_edit(lambda d: _set(d, ["weights", "sha256"], "z" * 64)), "sha256"),
    "size differs": (_edit(lambda d: _set(d, ["weights", "bytes"], d["weights"]["bytes"] + 1)),
                     "modified or truncated"),
    "history not a list": (_edit(lambda d: d.update(history={"a": 1})), "history"),
    "missing key": (_forge(lambda t: t.pop("fc.bias")), "'fc.bias'"),
    "missing BN buffer": (_forge(lambda t: t.pop("bn1.num_batches_tracked")), "'bn1.num_batches_tracked'"),
    "extra key": (_forge(lambda t: t.update(bogus=torch.zeros(2))), "'bogus'"),
    "wrong dtype": (_forge(lambda t: t.update({"fc.weight": t["fc.weight"].double()})), "'fc.weight'"),
    "wrong shape in both": (_forge(lambda t: t.update({"fc.bias": torch.zeros(11)})), "'fc.bias'"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_raise_load_error(saved, case):
    _, stem = saved
    corrupt, needle = CORRUPTIONS[case]
    corrupt(stem)
    before = _snapshot(stem.parent)
    with pytest.raises(LoadError) as exc:
        io.load(stem)
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg and ";" in msg  # one sentence: the cause; the fix
    assert _snapshot(stem.parent) == before  # loading never writes
    if case not in ("truncated safetensors", "flipped byte", "empty safetensors", "weights file missing",
                    "size differs", "name not in registry", "unknown builder kwarg", "layer type differs",
                    "layer does not exist", "layer shape not matching tensors", "tensor table shape not matching",
                    "tensor table dtype not matching", "missing key", "missing BN buffer", "extra key",
                    "wrong dtype", "wrong shape in both"):
        with pytest.raises(LoadError):  # structural problems are caught by read_spec too
            io.read_spec(stem)


def test_no_saved_model(tmp_path):
    with pytest.raises(LoadError, match="no saved model"):
        io.load(tmp_path / "nothing")
    with pytest.raises(LoadError, match="no saved model"):
        io.read_spec(tmp_path / "nothing.json")


def test_good_files_load_unchanged(saved):
    model, stem = saved
    before = _snapshot(stem.parent)
    io.load(stem)
    io.read_spec(stem)
    assert _snapshot(stem.parent) == before


# --------------------------------------------------------------------------- atomic overwrite

def test_failed_save_keeps_old_files(saved, monkeypatch):
    model, stem = saved
    before = _snapshot(stem.parent)
    real_save_file = safetensors.torch.save_file

    def broken_save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # a half-written file, then the crash
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    other = create_model("resnet20", width=0.25)
    with pytest.raises(OSError, match="disk full"):
        io.save(other, stem)
    assert _snapshot(stem.parent) == before  # no temp files left, old files byte-identical
    monkeypatch.undo()
    _assert_same_model(model, io.load(stem), torch.randn(2, 3, 8, 8))


def test_crash_between_weights_and_json_is_detected(saved, monkeypatch):
    _, stem = saved

    def broken_write_text(self, *a, **k):
        raise OSError("crash before the JSON")

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(OSError):
        io.save(create_model("resnet20", width=0.25), stem)
    monkeypatch.undo()
    assert sorted(p.name for p in stem.parent.iterdir()) == ["model.json", "model.safetensors"]
    with pytest.raises(LoadError, match="modified or truncated"):  # old JSON, new weights: never a silent mix
        io.load(stem)


def test_overwrite_replaces_both_files(saved):
    _, stem = saved
    other = _scramble_stats(create_model("resnet20", width=0.25), seed=5)
    io.save(other, stem)
    _assert_same_model(other, io.load(stem), torch.randn(2, 3, 8, 8))
    assert io.read_spec(stem)["history"] == []


def test_spec_with_unregistered_name_cannot_be_saved(tmp_path):
    model = create_model("lenet5")
    model.chanprune_spec = {"name": "not_registered_anywhere", "kwargs": {}}
    with pytest.raises(ModelError, match="not registered"):
        io.save(model, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_map_location_cuda(saved):
    model, stem = saved
    loaded = io.load(stem, map_location="cuda")
    assert next(loaded.parameters()).is_cuda
    _assert_same_model(model, loaded.cpu(), torch.randn(2, 3, 8, 8))


def test_save_keeps_what_the_model_carries(tmp_path):
    """chanprune.save(pruned, path) as the README writes it keeps the pruning record; load attaches it again."""
    import chanprune

    model = create_model("resnet20", num_classes=10, in_channels=1, width=0.5).eval()
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 10
    pruned = chanprune.prune(model, chanprune.L1Config(target_macs=0.6), data=(x, y))
    pruned.chanprune_extra = {"data": "mine"}
    io.save(pruned, tmp_path / "m")
    back = io.load(tmp_path / "m")
    assert back.chanprune_history == json.loads(json.dumps(pruned.chanprune_history))
    assert back.chanprune_extra == {"data": "mine"} and back.chanprune_history[-1]["input_shape"] == [1, 12, 12]
    io.save(back, tmp_path / "again")  # and a loaded model saves its record again
    assert len(io.read_spec(tmp_path / "again")["history"]) == 1


def test_weights_file_has_the_json_file_permissions(tmp_path):
    model = create_model("lenet5", num_classes=10, in_channels=1)
    json_path = io.save(model, tmp_path / "m")
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == json_path.stat().st_mode & 0o777
