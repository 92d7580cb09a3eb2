"""`chanprune trp` and `chanprune decompose`: smoke runs on digits, and one-sentence errors for bad input."""
import json
import re
import sys

import pytest
import torch
from typer.testing import CliRunner

import chanprune
from chanprune import cli
from chanprune.errors import ChanpruneError
from chanprune.lowrank import LowRank

D = ["--data", "digits", "--test-limit", "200"]


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    chanprune.save(chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.5), folder / "m",
                   extra={"data": "digits"})
    return folder / "m"


def _run(args):
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_decompose_command(stem, tmp_path):
    out = tmp_path / "dec"
    result = _run(["decompose", stem, *D, "--scheme", "spatial", "--target-macs", "0.6", "--out", out])
    assert "SVD decomposition" in result.output
    rec = json.loads((out / "record.json").read_text())
    assert rec["command"] == "decompose" and rec["config"]["target_macs"] == 0.6
    assert rec["decomposed"]["macs"] <= 0.6 * rec["dense"]["macs"]
    assert set(rec["accuracy"]) == {"accuracy dense", "accuracy decomposed", "accuracy fine-tuned"}
    model = chanprune.load(out / "model")
    assert sum(isinstance(m, LowRank) for m in model.modules()) == rec["decomposed"]["layers_decomposed"] > 0
    assert all(m.scheme == "spatial" for m in model.modules() if isinstance(m, LowRank))


def test_trp_command(stem, tmp_path):
    out = tmp_path / "trp"
    args = ["trp", stem, *D, "--epochs", "1", "--lr", "0.05", "--limit", "256", "--batch-size", "64", "--energy", "0.8", "--period", "2",
            "--out", out]
    result = _run(args)
    assert "TRP" in result.output
    rec = json.loads((out / "record.json").read_text())
    assert rec["command"] == "trp" and rec["config"]["period"] == 2 and rec["projections"] == 2  # 4 steps: 0 and 2
    assert sum(rec["ranks_after"].values()) < sum(rec["ranks_before"].values())
    assert rec["decomposed"]["macs"] < rec["dense"]["macs"]
    trained, small = chanprune.load(out / "trained"), chanprune.load(out / "model")
    assert not any(isinstance(m, LowRank) for m in trained.modules())
    assert any(isinstance(m, LowRank) for m in small.modules())
    # rerunning the same command resumes the finished run instead of training again
    _run(args)
    assert json.loads((out / "record.json").read_text())["ranks_after"] == rec["ranks_after"]


BAD = {
    "energy above 1": (["trp", "{m}", *D, "--energy", "1.5"], r"energy must lie in \(0, 1\]"),
    "period zero": (["trp", "{m}", *D, "--period", "0"], r"period must be an integer >= 1"),
    "unknown scheme (trp)": (["trp", "{m}", *D, "--scheme", "nd"], r"scheme must be 'channel' or 'spatial'"),
    "missing model (trp)": (["trp", "/nonexistent", *D], r"no saved model"),
    "unknown scheme": (["decompose", "{m}", *D, "--scheme", "nd"], r"scheme must be 'channel' or 'spatial'"),
    "unknown rule": (["decompose", "{m}", *D, "--rule", "nd"], r"unknown rank rule"),
    "unreachable target": (["decompose", "{m}", *D, "--target-macs", "0.01"], r"out of reach"),
    "value rule with target": (["decompose", "{m}", *D, "--rule", "value", "--threshold", "0.1", "--target-macs", "0.5"],
                               r"needs --rule energy"),  # the remedy as the command's flag
    "negative fine-tune": (["decompose", "{m}", *D, "--finetune-epochs", "-1"], r"--finetune-epochs must be >= 0"),
    "missing model (decompose)": (["decompose", "/nonexistent", *D], r"no saved model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_give_one_sentence(stem, tmp_path, monkeypatch, capsys, case):
    args, pattern = BAD[case]
    args = [a.format(m=stem) for a in args] + ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli.app, args)
    assert isinstance(result.exception, ChanpruneError), (result.exception, result.output)
    assert re.search(pattern, str(result.exception)) and "\n" not in str(result.exception)
    monkeypatch.setattr(sys, "argv", ["chanprune", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))
