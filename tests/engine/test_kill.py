"""A training process really killed mid-epoch (SIGTERM, SIGKILL) resumes to bit-identical weights.

A subprocess trains LeNet-5 on the 8x8 digits with a checkpoint after every optimizer step. The test polls
the checkpoint JSON (which must parse every time it is read: files are only replaced by an atomic rename)
until it records a step inside an epoch, then kills the process: SIGTERM, then — after the same command
resumed — SIGKILL. Each time the last checkpoint must load and verify (sha256), and running the same
command once more must finish with exactly the weights of an uninterrupted run (CPU, one thread, fixed
seed), leaving no temporary file behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import chanprune
from chanprune.engine import TrainConfig, train
from chanprune.engine.checkpoint import STATE_JSON, STATE_TENSORS, load_train_state

CONFIG = dict(epochs=2, lr=0.05, batch_size=32, limit_train=320, checkpoint_every=1, device="cpu")

WORKER = f"""
import sys, torch
torch.set_num_threads(1)
import chanprune
from chanprune.engine import TrainConfig, train
out = sys.argv[1]
torch.manual_seed(0)
model = chanprune.create_model("lenet5", num_classes=10, in_channels=1)
train(model, chanprune.load_data("digits"), TrainConfig(**{CONFIG!r}), checkpoint_dir=out + "/state", progress=False)
chanprune.save(model, out + "/final")
"""


def _run(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference():
    """The same training, uninterrupted, in this process (one thread, as in the worker)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = chanprune.create_model("lenet5", num_classes=10, in_channels=1)
        train(model, chanprune.load_data("digits"), TrainConfig(**CONFIG), progress=False)  # checkpoints change nothing
    finally:
        torch.set_num_threads(before)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].contiguous().view(-1).view(torch.uint8), b[k].contiguous().view(-1).view(torch.uint8))
        for k in a)


def _kill_mid_epoch(out: Path, sig: int, after_step: int) -> dict:
    """Start the worker, wait for a mid-epoch checkpoint past ``after_step``, send ``sig``; return that checkpoint."""
    state = out / "state"
    proc = _run(out)
    seen = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = (state / STATE_JSON).read_text()
            except FileNotFoundError:
                time.sleep(0.005)
                continue
            doc = json.loads(text)  # never a half-written file: it is only ever replaced by a rename
            if doc["step"] > 0 and doc["global_step"] > after_step:  # inside an epoch: kill now
                seen = doc
                proc.send_signal(sig)
                break
            time.sleep(0.002)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen is not None, f"the worker finished or failed before a mid-epoch checkpoint appeared:\n{output}"
    assert proc.returncode == -sig, (proc.returncode, output)
    assert not (out / "final.json").exists()

    # the last checkpoint is intact: JSON parses, the tensor file matches its sha256 (or verifies itself)
    loaded = load_train_state(state)
    assert loaded is not None
    ck, _ = loaded
    assert ck["global_step"] >= seen["global_step"] and not ck["complete"]
    assert {p.name for p in state.iterdir()} - {STATE_JSON, STATE_TENSORS} <= {
        p.name for p in state.glob(".train_state.*.tmp")}  # at most a stale temp file, never a partial target
    return ck


def test_killed_mid_epoch_then_resumed_is_bit_identical(tmp_path, reference):
    """SIGTERM in the first epoch, the same command again, SIGKILL later on, the same command to the end."""
    first = _kill_mid_epoch(tmp_path, signal.SIGTERM, after_step=0)
    second = _kill_mid_epoch(tmp_path, signal.SIGKILL, after_step=first["global_step"])  # resumed, then killed
    assert second["global_step"] > first["global_step"]

    proc = _run(tmp_path)
    output = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    final = safetensors.torch.load_file(str(tmp_path / "final.safetensors"))
    assert _same_bits(final, reference)
    assert json.loads((tmp_path / "state" / STATE_JSON).read_text())["complete"] is True
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
