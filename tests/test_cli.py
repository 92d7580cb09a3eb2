"""Every CLI command with bad arguments exits non-zero with one sentence naming the cause and the fix.

Three ways in: ``typer.testing.CliRunner`` on ``chanprune.cli.app`` (the command raises a ChanpruneError with
a one-sentence message), ``chanprune.cli.main()`` in this process (the real handler: exit status 2, one
``error:`` line on stderr, no traceback), and a real subprocess (``python -m chanprune.cli``) for the exit path.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import chanprune
from chanprune import cli
from chanprune.errors import ChanpruneError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models: LeNet-5 for the 8x8 digits, a 3-channel ResNet and a 4-class LeNet that do not fit them."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    chanprune.save(chanprune.create_model("lenet5", num_classes=10, in_channels=1), folder / "m", extra={"data": "digits"})
    chanprune.save(chanprune.create_model("resnet20", num_classes=10, in_channels=3, width=0.25), folder / "rgb",
                   extra={"data": "cifar10"})
    chanprune.save(chanprune.create_model("lenet5", num_classes=4, in_channels=1), folder / "four", extra={"data": "digits"})
    (folder / "broken.json").write_text('{"format": "chanprune-model", "version": 1, "name": ')
    return folder


D = ["--data", "digits"]
# (arguments, with {m} for a model stem in the fixture folder; a regex the message must match)
CASES = {
    "unknown model": (["train", "nosuchnet", *D], r"unknown model 'nosuchnet'; choose one of"),
    "unknown data set (train)": (["train", "lenet5", "--data", "nosuchdata"], r"unknown data set 'nosuchdata'"),
    "unknown data set (evaluate)": (["evaluate", "{m}/m", "--data", "nosuchdata"], r"unknown data set"),
    "missing model file (evaluate)": (["evaluate", "/nonexistent", *D], r"no saved model at '/nonexistent'; pass"),
    "missing model file (info)": (["info", "/nonexistent"], r"no saved model"),
    "missing model file (bench)": (["bench", "/nonexistent", *D], r"no saved model"),
    "missing baseline (bench)": (["bench", "{m}/m", *D, "--baseline", "/nonexistent"], r"no saved model"),
    "missing model file (finetune)": (["finetune", "/nonexistent", *D], r"no saved model"),
    "missing model file (prune)": (["prune", "/nonexistent", *D, "--ratio", "0.3"], r"no saved model"),
    "missing checkpoint (demo)": (["demo", "--checkpoint", "/nonexistent"], r"no saved model"),
    "corrupt spec (info)": (["info", "{m}/broken"], r"not valid JSON"),
    "ratio above 1": (["prune", "{m}/m", *D, "--ratio", "1.5"], r"--ratio must lie in \[0, 1\), got 1.5"),
    "ratio of 1": (["prune", "{m}/m", *D, "--ratio", "1"], r"--ratio must lie in \[0, 1\)"),
    "negative ratio": (["prune", "{m}/m", *D, "--ratio", "-0.1"], r"--ratio must lie in \[0, 1\)"),
    "target MACs above 1": (["prune", "{m}/m", *D, "--method", "l1", "--target-macs", "1.5"], r"target_macs must lie in"),
    "target MACs unreachable (l1)": (["prune", "{m}/m", *D, "--method", "l1", "--target-macs", "0.0001"],
                                     r"cannot be reached.*ask for a larger target"),
    "target MACs unreachable (hierarchical)": (["prune", "{m}/m", *D, "--target-macs", "0.0001"],
                                               r"ask for a target of at least"),
    "unknown method": (["prune", "{m}/m", *D, "--method", "nosuch"], r"unknown method 'nosuch'; choose one of"),
    "two targets": (["prune", "{m}/m", *D, "--method", "l1", "--ratio", "0.3", "--target-macs", "0.5"], r"give only one"),
    "negative fine-tune epochs": (["prune", "{m}/m", *D, "--ratio", "0.3", "--finetune-epochs", "-1"],
                                  r"--finetune-epochs must be >= 0"),
    "zero calibration images": (["prune", "{m}/m", *D, "--method", "l1", "--calibration", "0"], r"calibration must be"),
    "zero samples": (["analyze", "{m}/m", *D, "--samples", "0"], r"samples must be a positive number"),
    "threshold above 1": (["analyze", "{m}/m", *D, "--threshold", "2"], r"threshold must lie in"),
    "unknown reading": (["analyze", "{m}/m", *D, "--reading", "nosuch"], r"unknown reading"),
    "negative epochs": (["train", "lenet5", *D, "--epochs", "-1"], r"epochs is -1 but must be"),
    "zero learning rate": (["finetune", "{m}/m", *D, "--lr", "0"], r"lr is 0.0 but must be"),
    "zero repeats": (["bench", "{m}/m", *D, "--repeats", "0"], r"repeats must be >= 1"),
    "model needs other channels": (["evaluate", "{m}/rgb", *D], r"takes 3-channel images.*pass --data cifar10"),
    "model needs other channels (prune)": (["prune", "{m}/rgb", *D, "--ratio", "0.3"], r"takes 3-channel images"),
    "model has fewer classes": (["evaluate", "{m}/four", *D], r"has 4 classes but data set 'digits' has 10"),
}


def _args(args, folder):
    return [a.format(m=folder) for a in args]


def _one_sentence(msg: str) -> bool:
    msg = msg.strip()
    return bool(msg) and "\n" not in msg and "Traceback" not in msg and re.search(r"[.!?]\s+[A-Z]", msg) is None


@pytest.mark.parametrize("case", list(CASES))
def test_bad_arguments_give_one_sentence(models, tmp_path, monkeypatch, capsys, case):
    args, pattern = CASES[case]
    args = _args(args, models) + (["--out", str(tmp_path / "out")] if args[0] in ("train", "prune", "analyze") else [])
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the repository

    # 1. CliRunner on the typer app: the command refuses with a ChanpruneError
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ChanpruneError), (type(result.exception), result.output)
    msg = str(result.exception)
    assert re.search(pattern, msg), msg
    assert _one_sentence(msg), msg

    # 2. the real handler, in process: status 2, one "error:" line, no traceback
    monkeypatch.setattr(sys, "argv", ["chanprune", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]) and "Traceback" not in out + err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


def test_usage_errors_are_not_tracebacks(capsys, monkeypatch):
    """Typer's own errors (unknown option, missing argument) exit 2 with a usage message."""
    for args in (["prune"], ["evaluate", "x", "--no-such-option"], ["nosuchcommand"]):
        monkeypatch.setattr(sys, "argv", ["chanprune", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2 and "Traceback" not in out + err


@pytest.mark.parametrize("case", ["missing model file (evaluate)", "ratio above 1"])
def test_real_process_exit_path(models, tmp_path, case):
    args, pattern = CASES[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "chanprune.cli", *_args(args, models)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_good_command_still_works(models, tmp_path):
    """The checks do not get in the way: evaluating the digits model on digits writes its record."""
    result = CliRunner().invoke(cli.app, ["evaluate", str(models / "m"), *D, "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["command"] == "evaluate"


def test_demo_runs_end_to_end_on_a_small_model(models, tmp_path):
    """The main job's code path (analysis, hierarchical prune, BN, fine-tune, before/after) on LeNet-5 and digits."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli.app, ["demo", "--checkpoint", str(models / "m"), *D, "--target-macs", "0.6",
                                          "--finetune-limit", "128", "--test-limit", "200", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    text = " ".join(result.output.split())  # rich wraps lines
    assert "can go before accuracy drops" in text and "layer budgets" in text
    assert list(out.rglob("*.safetensors")) and list(out.rglob("*.json"))


def test_warnings_are_one_line(models, tmp_path, monkeypatch, capsys):
    """A warning (here: LeNet's 120- and 84-wide layers against 50 gate samples) prints as one 'warning:' line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["chanprune", "analyze", f"{models}/m", *D, "--samples", "50", "--reading", "gate",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: groups wider than the 50 samples"), err
    assert "UserWarning" not in out + err and "samples=120" in lines[0]
