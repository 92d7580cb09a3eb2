"""bench/harness.py: the shared checkpoint/data context, the tie rule and the resumable results file."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from bench import harness


def test_tie_rule():
    assert harness.compare((80.0, 0.5), (79.6, 0.1)) == "tie"
    assert harness.compare((80.0, 0.1), (79.0, 0.3)) == "win"
    assert harness.compare((78.0, 0.1), (79.0, 0.3)) == "loss"
    # 10,000 images at ~90 %: one SE of the difference is ~0.42 points
    assert harness.compare_no_ft(90.3, 90.0, 10000) == "tie"
    assert harness.compare_no_ft(91.0, 90.0, 10000) == "win"
    assert harness.compare_no_ft(90.0, 91.0, 100000) == "loss"


def test_merge_is_deep_and_leaves_its_inputs_alone():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    out = harness.merge(base, {"a": {"y": 3}, "c": 4})
    assert out == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4} and base["a"]["y"] == 2


def test_results_resume_and_attempts(tmp_path):
    path = tmp_path / "s.json"
    res = harness.Results(path, {"model": "m"})
    res.add({"key": "a", "status": "ok"})
    assert res.attempt("b") == 1 and res.attempt("b") == 2
    again = harness.Results(path, {"model": "m"})
    assert again.keys() == {"a"} and again.doc["attempts"]["b"] == 2
    again.add({"key": "a", "status": "failed"})
    assert [r["status"] for r in harness.Results(path).doc["rows"]] == ["failed"]


def test_keyed_rows_and_parts_merge_with_what_another_writer_wrote(tmp_path):
    path = tmp_path / "r.json"
    key = lambda r: (r["kind"], r["n"])  # noqa: E731
    a, b = harness.Results(path, key=key, empty={}), harness.Results(path, key=key, empty={})
    a.add({"kind": "main", "n": 1, "acc": 1.0})
    b.add({"kind": "main", "n": 2, "acc": 2.0})   # b never read a's row
    b.merge({"sweep": [1, 2]})
    a.add({"kind": "main", "n": 1, "acc": 3.0})   # replaces its own row only
    doc = json.loads(path.read_text())
    assert sorted((r["n"], r["acc"]) for r in doc["rows"]) == [(1, 3.0), (2, 2.0)] and doc["sweep"] == [1, 2]


def test_two_writers_of_one_file_keep_each_others_rows(tmp_path):
    path = tmp_path / "s.json"
    a, b = harness.Results(path, {"model": "m"}), harness.Results(path, {"model": "m"})
    a.add({"key": "x", "status": "ok"})
    b.add({"key": "y", "status": "ok"})
    a.log_invocation({"rows_computed": 1})
    b.log_invocation({"rows_computed": 1})
    doc = harness.Results(path).doc
    assert {r["key"] for r in doc["rows"]} == {"x", "y"} and len(doc["invocations"]) == 2
    first = harness.claim(path, "x")
    assert first is not None and harness.claim(path, "x") is None   # a row runs in one process only
    other = harness.claim(path, "y")
    assert other is not None
    first.close(), other.close()
    again = harness.claim(path, "x")
    assert again is not None
    again.close()


def test_waiting_for_a_row_blocks_until_its_holder_is_done(tmp_path):
    path = tmp_path / "s.json"
    holder = harness.claim(path, "parent")
    waited = []
    t = threading.Thread(target=lambda: waited.append(harness.claim(path, "parent", wait=True)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not waited
    holder.close()
    t.join(5)
    assert waited and waited[0] is not None
    waited[0].close()


def test_bench_loads_a_zoo_checkpoint_and_measures_it(tiny_zoo):
    b = harness.Bench("resnet20_digits", zoo=tiny_zoo, test_images=200, calibration_images=64)
    assert b.data_name == "digits" and b.record["model"] == "resnet20" and b.test_n == 200
    assert b.calib_pair[0].shape[0] == 64 and b.model_kwargs["width"] == 0.5
    assert 0 <= b.dense_accuracy <= 100 and b.dense_macs > 0
    before = {k: v.clone() for k, v in b.dense.state_dict().items()}
    tuned, seconds = b.finetuned(b.dense, {"epochs": 1, "train_images": 128, "batch_size": 64}, seed=0)
    assert seconds > 0 and not next(tuned.parameters()).is_cuda and not tuned.training
    assert all(torch.equal(before[k], v) for k, v in b.dense.state_dict().items())   # the input stays as it was
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items() if v.is_floating_point())
    bn = next(m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d))
    old = bn.running_mean.clone()
    assert b.recalibrate(tuned) == 64 and not torch.equal(old, bn.running_mean)


def test_missing_checkpoint_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        harness.Bench("resnet20_digits", zoo=tmp_path)
