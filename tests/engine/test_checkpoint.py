"""Exact resume from pickle-free checkpoints; damaged or foreign checkpoints fail cleanly."""
from __future__ import annotations

import json

import pytest
import torch

from chanprune.engine import CheckpointError, TrainConfig, train
from chanprune.engine import checkpoint as ckmod
from chanprune.errors import ChanpruneError

# 320 samples / 32 = 10 steps per epoch, 2 epochs; step checkpoints every 3 steps.
CFG = dict(epochs=2, lr=0.1, batch_size=32, limit_train=320, augment=True, checkpoint_every=3, device="cpu")


class Killed(Exception):
    pass


def kill_at(global_step: int):
    def cb(info):
        if info["global_step"] == global_step:
            raise Killed

    return cb


def numbers(hist):
    """History without wall-clock fields."""
    return [{k: v for k, v in e.items() if not k.endswith("time_s")} for e in hist["epochs"]]


@pytest.fixture(scope="module")
def reference(digits, make_net, tmp_path_factory):
    """An uninterrupted run (with checkpoints written along the way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = make_net()
    hist = train(model, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path_factory.mktemp("ref"), progress=False)
    torch.set_num_threads(before)
    return model, hist


@pytest.mark.parametrize("stop", [1, 7, 10, 14, 20])
def test_killed_and_resumed_run_is_bit_identical(digits, make_net, same_weights, reference, tmp_path, stop):
    ref_model, ref_hist = reference
    model = make_net()
    with pytest.raises(Killed):
        train(model, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False, callback=kill_at(stop))
    # Step checkpoints every 3 steps, epoch-end ones after steps 10 and 20; the callback of step s
    # runs after that step's step checkpoint but before its epoch-end one.
    committed = max((stop // 3) * 3, 10 if stop > 10 else 0)
    if committed:
        assert json.loads((tmp_path / "train_state.json").read_text())["global_step"] == committed
        fresh = make_net(seed=123)  # resume must overwrite whatever the new process starts from
    else:
        assert not (tmp_path / "train_state.json").exists()
        fresh = make_net()  # nothing committed: a plain restart
    hist = train(fresh, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False)
    assert (hist["resumed_from"] or {"global_step": 0})["global_step"] == committed
    same_weights(fresh, ref_model)
    assert numbers(hist) == numbers(ref_hist)
    assert hist["test_accuracy"] == ref_hist["test_accuracy"]


def test_kill_between_tensor_file_and_json_commit(digits, make_net, same_weights, reference, tmp_path, monkeypatch):
    """Killed after train_state.safetensors was replaced but before the JSON was: still exact."""
    ref_model, ref_hist = reference
    real = ckmod.write_text_atomic
    calls = {"n": 0}

    def dying_write(path, text):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint (global step 9)
            raise Killed
        real(path, text)

    monkeypatch.setattr(ckmod, "write_text_atomic", dying_write)
    with pytest.raises(Killed):
        train(make_net(), digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(ckmod, "write_text_atomic", real)
    assert json.loads((tmp_path / "train_state.json").read_text())["global_step"] == 6
    model = make_net()
    hist = train(model, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False)
    assert hist["resumed_from"]["global_step"] == 9
    same_weights(model, ref_model)
    assert numbers(hist) == numbers(ref_hist)


def test_finished_checkpoint_resumes_without_training(digits, make_net, same_weights, reference, tmp_path):
    ref_model, ref_hist = reference
    model = make_net()
    train(model, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False)
    again = make_net(seed=5)
    hist = train(again, digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False,
                 callback=lambda info: pytest.fail("no step should run"))
    same_weights(again, ref_model)
    assert hist["global_step"] == 20 and numbers(hist) == numbers(ref_hist)


def test_checkpoint_files_are_safetensors_and_json(digits, make_net, tmp_path, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("torch.save (pickle) must not be used")

    monkeypatch.setattr(torch, "save", no_pickle)
    train(make_net(), digits, TrainConfig(**{**CFG, "epochs": 1}), checkpoint_dir=tmp_path, progress=False,
          eval_each_epoch=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.json", "train_state.safetensors"]
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "train_state.safetensors")
    assert "model.fc.weight" in tensors and "rng.cpu" in tensors
    assert any(k.startswith("optim.") and k.endswith(".momentum_buffer") for k in tensors)
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 0, 10)
    assert state["config"]["lr"] == CFG["lr"] and len(state["history"]) == 1 and len(state["safetensors_sha256"]) == 64


def _interrupted(digits, make_net, tmp_path):
    with pytest.raises(Killed):
        train(make_net(), digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False, callback=kill_at(4))


def _assert_clean_error(digits, make_net, tmp_path, **cfg):
    with pytest.raises(ChanpruneError) as exc:
        train(make_net(), digits, TrainConfig(**{**CFG, **cfg}), checkpoint_dir=tmp_path, progress=False)
    msg = str(exc.value)
    assert isinstance(exc.value, CheckpointError)
    assert "resume=False" in msg and str(tmp_path) in msg and "\n" not in msg
    return msg


def test_flipped_byte_in_tensor_file_is_reported(digits, make_net, tmp_path):
    _interrupted(digits, make_net, tmp_path)
    p = tmp_path / "train_state.safetensors"
    blob = bytearray(p.read_bytes())
    blob[-5] ^= 0xFF
    p.write_bytes(bytes(blob))
    assert "corrupt" in _assert_clean_error(digits, make_net, tmp_path)


def test_truncated_tensor_file_is_reported(digits, make_net, tmp_path):
    _interrupted(digits, make_net, tmp_path)
    p = tmp_path / "train_state.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    _assert_clean_error(digits, make_net, tmp_path)


def test_garbage_json_and_missing_tensor_file_are_reported(digits, make_net, tmp_path):
    _interrupted(digits, make_net, tmp_path)
    (tmp_path / "train_state.json").write_text("{not json")
    _assert_clean_error(digits, make_net, tmp_path)
    _interrupted(digits, make_net, tmp_path / "b")
    (tmp_path / "b" / "train_state.safetensors").unlink()
    _assert_clean_error(digits, make_net, tmp_path / "b")


def test_mismatched_config_or_model_is_reported_and_resume_false_starts_over(digits, make_net, tmp_path):
    _interrupted(digits, make_net, tmp_path)
    assert "lr" in _assert_clean_error(digits, make_net, tmp_path, lr=0.05)
    with pytest.raises(CheckpointError):
        train(make_net(num_classes=7), digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, progress=False)
    # device / checkpoint_every do not change the result, so they may differ on resume.
    train(make_net(), digits, TrainConfig(**{**CFG, "checkpoint_every": 0, "epochs": 2}), checkpoint_dir=tmp_path,
          progress=False, eval_each_epoch=False)
    hist = train(make_net(), digits, TrainConfig(**{**CFG, "lr": 0.05}), checkpoint_dir=tmp_path, resume=False,
                 progress=False, eval_each_epoch=False)
    assert hist["resumed_from"] is None and hist["global_step"] == 20
    assert json.loads((tmp_path / "train_state.json").read_text())["config"]["lr"] == 0.05
