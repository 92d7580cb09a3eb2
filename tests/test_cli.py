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
                                               r"ask for a target of at least.*or pass --allow-exceed to"),
    "unknown method": (["prune", "{m}/m", *D, "--method", "nosuch"], r"unknown method 'nosuch'; choose one of"),
    "two targets": (["prune", "{m}/m", *D, "--method", "l1", "--ratio", "0.3", "--target-macs", "0.5"], r"give only one"),
    "negative fine-tune epochs": (["prune", "{m}/m", *D, "--ratio", "0.3", "--finetune-epochs", "-1"],
                                  r"--finetune-epochs must be >= 0"),
    "zero calibration images": (["prune", "{m}/m", *D, "--method", "l1", "--calibration", "0"], r"calibration must be"),
    "zero samples": (["analyze", "{m}/m", *D, "--calibration", "0"], r"calibration must be a positive number"),
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
    """A warning (here: LeNet's 120- and 84-wide layers against 70 gate samples) prints as one 'warning:' line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["chanprune", "analyze", f"{models}/m", *D, "--calibration", "70", "--reading", "gate",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: groups wider than the 70 samples"), err
    assert "UserWarning" not in out + err and "--calibration 120" in lines[0]  # the remedy as this command's flag


# ------------------------------------------------------------------------------ the terminal (issue 18)
def _all_options():
    import typer.main

    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                yield name, param


def test_every_option_has_help_and_the_method_list_is_whole():
    missing = [f"{c} --{p.name}" for c, p in _all_options() if not (p.help or "").strip()]
    assert not missing, missing
    method = {c: p.help for c, p in _all_options() if p.name == "method"}
    for name in chanprune.api.METHODS:
        assert name in method["prune"] and name in method["demo"], name
    assert "..." not in method["prune"]


def test_existing_file_as_out_folder_refused_before_any_work(models, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a finished result")
    result = CliRunner().invoke(cli.app, ["prune", str(models / "m"), *D, "--method", "l1", "--out", str(taken)])
    assert isinstance(result.exception, ChanpruneError) and "--out" in str(result.exception)
    assert taken.read_text() == "a finished result"
    folder = tmp_path / "folder"
    folder.mkdir()
    result = CliRunner().invoke(cli.app, ["evaluate", str(models / "m"), *D, "--out", str(folder)])
    assert isinstance(result.exception, ChanpruneError) and "is a folder" in str(result.exception)


def test_fractional_finetune_epochs_refused(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["chanprune", "prune", str(models / "m"), *D, "--finetune-epochs", "0.3",
                                      "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and "finetune-epochs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_slowdown_is_not_called_faster():
    assert cli._speed(0.73) == "1.37× slower" and cli._speed(2.0) == "2.00× faster"


def test_messages_use_the_callers_terms():
    """One mechanism: the command's own options become flags; names it does not have stay as written."""

    run = cli._in_cli_terms(lambda allow_exceed=typer_option(False), calibration=typer_option(None): None)
    run()  # registers the options of this stand-in command
    assert cli.cli_terms("or pass allow_exceed=True to prune") == "or pass --allow-exceed to prune"
    assert cli.cli_terms("pass calibration=120 or more.") == "pass --calibration 120 or more."
    assert cli.cli_terms("pass ridge=1e-8") == "pass ridge=1e-8"


def typer_option(default):
    import typer

    return typer.Option(default)


def test_evaluate_and_bench_write_records_without_out(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, path in ((["evaluate", str(models / "m"), *D, "--threads", "1"], "runs/evaluate/record.json"),
                       (["bench", str(models / "m"), *D, "--baseline", str(models / "m"), "--repeats", "2",
                         "--threads", "1"], "runs/bench/record.json")):
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0, (result.output, result.exception)
        record = json.loads((tmp_path / path).read_text())
        assert record["threads"] == 1 and record["versions"]["torch_pruning"]
        text = " ".join(result.output.split())
        assert "1 thread)" in text and "p10–p90" in text  # the thread count and the spread beside every latency


def test_analyze_record_and_plots(models, tmp_path):
    out = tmp_path / "a"
    with pytest.warns(UserWarning, match="only 1 image"):
        result = CliRunner().invoke(cli.app, ["analyze", str(models / "m"), *D, "--calibration", "1", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    record = json.loads((out / "analysis.json").read_text())
    assert record["model"] == str(models / "m") and record["data"] == "digits"
    assert record["versions"]["torch"] and record["wall_seconds"] > 0 and record["groups"]
    assert {p.name for p in out.iterdir()} >= {"analysis.json", "curve.json", "curve.png", "spectra.png", "max_rates.png"}


MYNETS = '''
import torch.nn as nn
import chanprune


@chanprune.register_model("clinet")
def clinet(num_classes=10, in_channels=1, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


def test_import_loads_a_users_model(tmp_path, monkeypatch):
    """A model registered in the user's own module: --import makes the CLI know it; without it, the error says so."""
    from chanprune.models import registry

    (tmp_path / "clinets.py").write_text(MYNETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import clinets  # noqa: F401

        chanprune.save(chanprune.create_model("clinet", num_classes=10, in_channels=1), tmp_path / "m",
                       extra={"data": "digits"})
        registry._REGISTRY.pop("clinet")
        sys.modules.pop("clinets")
        result = CliRunner().invoke(cli.app, ["info", str(tmp_path / "m")])
        assert "--import MODULE" in str(result.exception)
        result = CliRunner().invoke(cli.app, ["--import", "clinets", "evaluate", str(tmp_path / "m"), *D,
                                              "--threads", "1"])
        assert result.exit_code == 0, (result.output, result.exception)
        result = CliRunner().invoke(cli.app, ["--import", "no_such_module_here", "info"])
        assert isinstance(result.exception, ChanpruneError) and "--import no_such_module_here" in str(result.exception)
    finally:
        registry._REGISTRY.pop("clinet", None)
        sys.modules.pop("clinets", None)


def test_long_steps_draw_bars_when_asked(monkeypatch):
    """track() is free when bars are off, and draws one bar per pass (M/N, elapsed) when the CLI turns them on."""
    from chanprune import progress

    items = [1, 2, 3]
    assert progress.track(items, "x") is items  # off by default: the library stays quiet
    monkeypatch.setattr(progress, "_SHOW", True)
    monkeypatch.setattr(progress, "live_capable", lambda: True)
    drawn = []
    monkeypatch.setattr(progress.Bar, "advance", lambda self, n=1, **m: drawn.append(self._description))
    tracked = progress.track(items, "analysis (gate reading)")
    assert list(tracked) == items and list(tracked) == items and len(tracked) == 3
    assert drawn == ["analysis (gate reading)"] * 6


def test_info_on_a_model_saved_as_the_readme_shows(tmp_path):
    """chanprune.save(pruned, path) keeps the record: info shows the steps, the data set and the MACs."""
    data = chanprune.load_data("digits")
    model = chanprune.create_model("lenet5", num_classes=10, in_channels=1)
    pruned = chanprune.prune(model, chanprune.L1Config(target_macs=0.6, calibration=32), data=data)
    chanprune.save(pruned, tmp_path / "m")
    result = CliRunner().invoke(cli.app, ["info", str(tmp_path / "m")])
    assert result.exit_code == 0, (result.output, result.exception)
    text = " ".join(result.output.split())
    assert "1 step(s): l1" in text and "digits" in text and "MACs" in text
