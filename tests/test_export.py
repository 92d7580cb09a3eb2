"""ONNX export: round trips against PyTorch for every zoo family and compression kind; refusals are one sentence."""
import pytest
import torch
from torch import nn

import chanprune
from chanprune.errors import ConfigError, ExportError
from chanprune.onnx_export import export, onnx_session

from tests.conftest import SIZE, calib, tiny
from tests.kinds import KINDS, ZOO_FAMILIES


def _example(batch=1, size=SIZE):
    return torch.zeros(batch, 1, size, size)


# LeNet-5 pools adaptively to 5×5: at 12×12 the TorchScript exporter refuses that (not a divisor) and the slower
# dynamo fallback runs (tested on its own below); at 28×28 (Fashion-MNIST) the fast exporter works
EXPORT_SIZE = {"lenet5": 28}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ZOO_FAMILIES)
def test_round_trip_every_family_and_kind(tmp_path, name, kind):
    model = KINDS[kind](name)
    size = EXPORT_SIZE.get(name, SIZE)
    real = calib(24, size=size, seed=3)[0]
    res = export(model, tmp_path / "m.onnx", _example(size=size), data=real)
    assert (tmp_path / "m.onnx").stat().st_size == res.bytes > 0
    assert res.max_abs_error <= res.tolerance and res.max_abs_error_real <= res.tolerance
    assert res.real_images == 24 and res.checked_batches == [1, 5]
    # dynamic batch: a batch size never seen at export time runs and matches
    x = torch.randn(7, 1, size, size)
    got = onnx_session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        ref = model.eval()(x)
    assert got.shape == tuple(ref.shape)
    assert float((torch.from_numpy(got) - ref).abs().max()) <= res.tolerance


def test_real_images_from_a_bundle(tmp_path):
    data = chanprune.load_data("digits")
    model = chanprune.create_model("resnet20", num_classes=data.num_classes, in_channels=data.in_channels, width=0.5).eval()
    res = export(model, tmp_path / "m.onnx", data.example_inputs(1), data=data, real_images=10)
    assert res.real_images == 10 and res.max_abs_error_real <= res.tolerance


class _SVD(nn.Module):
    """No ONNX translation in either exporter (torch 2.13)."""

    def forward(self, x):
        return torch.linalg.svdvals(x).flatten(1)


class _Drifts(nn.Module):
    """Runs differently in PyTorch than in the traced graph (a Python-side branch on the batch size)."""

    def forward(self, x):
        return x.flatten(1) * (2.0 if x.shape[0] == 1 else 3.0)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_unsupported_operator_is_one_sentence_and_writes_nothing(tmp_path, capfd, exporter):
    target = tmp_path / "bad.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError, match="does not export to ONNX: .*svd") as err:
        export(_SVD(), target, _example(), exporter=exporter)
    assert "\n" not in str(err.value)
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left
    out, errs = capfd.readouterr()
    assert "graph(" not in out + errs  # the exporter's IR dump (printed from C++) is not shown


def test_auto_falls_back_to_the_dynamo_exporter(tmp_path):
    class UpPool(nn.Module):  # adaptive pooling to a larger size: the TorchScript exporter refuses it
        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 5).flatten(1)

    with pytest.raises(ExportError):
        export(UpPool(), tmp_path / "m.onnx", torch.zeros(1, 1, 3, 3), exporter="torchscript")
    res = export(UpPool(), tmp_path / "m.onnx", torch.zeros(1, 1, 3, 3))
    assert res.exporter == "dynamo" and res.max_abs_error <= res.tolerance


def test_mismatch_is_refused(tmp_path):
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export(_Drifts(), tmp_path / "m.onnx", _example(), check_batches=(1, 3))
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="exporter"):
        export(tiny("lenet5"), tmp_path / "m.onnx", _example(), exporter="tflite")
    with pytest.raises(ConfigError, match="example_inputs"):
        export(tiny("lenet5"), tmp_path / "m.onnx", [1, 2])
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        export("model", tmp_path / "m.onnx", _example())


def test_cli_export_writes_a_checked_file(tmp_path):
    from typer.testing import CliRunner

    from chanprune import cli

    data = chanprune.load_data("digits")
    chanprune.save(chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.25), tmp_path / "m",
                   extra={"data": "digits"})
    result = CliRunner().invoke(cli.app, ["export", str(tmp_path / "m"), "--data", "digits", "--exporter", "torchscript"])
    assert result.exit_code == 0, (result.output, result.exception)
    session = onnx_session(tmp_path / "m.onnx")
    assert session.run(None, {"input": data.example_inputs(3).numpy()})[0].shape == (3, 10)
    assert "tolerance" in result.output
    bad = CliRunner().invoke(cli.app, ["export", str(tmp_path / "m"), "--data", "digits", "--format", "tflite"])
    assert bad.exit_code != 0 and "only format is onnx" in str(bad.exception)


def test_top_level_export_is_the_function(tmp_path):
    """chanprune.export is the function (its module is chanprune.onnx_export, so importing it shadows nothing)."""
    import importlib

    importlib.import_module("chanprune.onnx_export")
    importlib.import_module("chanprune.measurement")
    assert callable(chanprune.export) and chanprune.export.__name__ == "export"
    assert chanprune.export(tiny("lenet5"), tmp_path / "m.onnx", _example(size=28)).max_abs_error >= 0
