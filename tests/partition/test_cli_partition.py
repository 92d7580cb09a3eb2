"""`chanprune partition`: runs end to end on a tiny model; bad input is one sentence."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import chanprune
from chanprune import cli
from chanprune.errors import ChanpruneError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    chanprune.save(chanprune.create_model("lenet5", num_classes=10, in_channels=1), folder / "m", extra={"data": "digits"})
    return folder


def test_partition_command_writes_a_loadable_model_and_record(saved, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["partition", str(saved / "m"), "--data", "digits", "-P", "2", "--assignment",
                                          "energy", "--recover", "compensate", "--calibration", "32", "--test-limit", "100",
                                          "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    assert record["method"] == "partition" and record["record"]["run"] == ["classifier.0", "classifier.2"]
    assert record["pruned"]["params"] < record["dense"]["params"]
    back = chanprune.load(out / "model")
    assert type(back.classifier[0]).__name__ == "BlockLinear"


def test_partition_command_bad_parts_is_one_sentence(saved, tmp_path):
    result = CliRunner().invoke(cli.app, ["partition", str(saved / "m"), "--data", "digits", "-P", "200",
                                          "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ChanpruneError)
    message = str(result.exception)
    assert "P=200 is larger than" in message and "\n" not in message
