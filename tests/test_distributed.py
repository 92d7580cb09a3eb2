"""Two gloo processes on the CPU give what one process gives (docs/distributed.md).

* the calibration statistics (gate/feature Grams, CaP moments, CP rows, HRank maps, UCP's mean excitations) and the
  pruning decisions and pruned weights of hierarchical, CP and CaP match one process; all ranks hold the same model;
* a 2-process fine-tune (DDP, each rank a half of every global batch) matches one process with the same global batch,
  with and without TRP's projection and nuclear-norm sub-gradient;
* a 2-process run killed with SIGKILL resumes — with one process — to the weights of an uninterrupted run;
* ``chanprune finetune ... --nproc 2`` runs under torchrun (``python -m chanprune``).

Processes start with torch.multiprocessing (fork on the CPU, spawn where CUDA is) or torchrun, on a free port,
under a timeout.
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
import torch
import torch.multiprocessing as mp

import chanprune
from chanprune import distributed
from chanprune.engine import TrainConfig, train
from tests.conftest import calib, tiny

TIMEOUT = 240
ROOT = Path(__file__).resolve().parents[1]


def _child(rank, world, port, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        distributed.init_from_env(timeout_s=TIMEOUT)
        queue.put((rank, fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put((rank, exc))
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_ranks(fn, world: int = 2, *args) -> list:
    """``fn(*args)`` in ``world`` gloo processes; its return values in rank order."""
    # fork starts in a fraction of spawn's time (nothing is imported again); CUDA cannot be forked once initialised
    ctx = mp.get_context("spawn" if torch.cuda.is_available() else "fork")
    queue = ctx.Queue()
    port = distributed.free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        deadline = time.time() + TIMEOUT
        while len(results) < world:
            rank, value = queue.get(timeout=max(1, deadline - time.time()))
            if isinstance(value, BaseException):
                raise AssertionError(f"rank {rank} failed: {value!r}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


# ------------------------------------------------------------------ statistics and pruning decisions

def _numpy(state):
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def statistics_and_decisions():
    """Everything a prune computes from calibration data, on 64 images in 8 batches (rank's block under 2 ranks)."""
    from chanprune.analysis import collect
    from chanprune.cli import method_config
    from chanprune.criteria.data_driven import map_rank
    from chanprune.analysis.gradients import collect_features
    from chanprune.graph import PruningGraph
    from chanprune.recovery import consumer_moments, consumer_rows

    torch.set_num_threads(1)
    model = tiny("resnet20")
    x, y = calib(64)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    graph = PruningGraph(model, x[:1])
    out = {"grams": {}}
    for reading, labels in (("gate", "true"), ("gate", "sampled"), ("feature", "true")):
        stats = collect(model, graph, batches, reading, labels=labels, seed=3)
        out["grams"][f"{reading}/{labels}"] = {g: (s.gram.numpy(), s.col_sum.numpy(), s.n_samples) for g, s in stats.items()}
    consumers = [graph.groups[0].consumers[0].name, graph.groups[-1].consumers[0].name]
    out["moments"] = {n: (m.mu.numpy(), m.sigma.numpy(), m.count) for n, m in consumer_moments(model, consumers, batches).items()}
    out["rows"] = {n: r.numpy() for n, r in consumer_rows(model, consumers, batches, points_per_image=3, seed=1).items()}
    out["hrank"] = {g: r.numpy() for g, r in collect_features(model, graph, batches, lambda o: map_rank(o.clamp_min(0))).items()}
    from chanprune.ucp.mseb import insert_mseb, mseb_scores

    scored = tiny("resnet20")
    insert_mseb(scored, x[:1])
    out["mseb"] = {n: v.numpy() for n, v in mseb_scores(scored.eval(), batches).items()}
    out["pruned"] = {}
    for method in ("hierarchical", "cp", "cap"):  # the other methods' statistics are compared above
        extra = {"allow_exceed": True, "recover": "compensate"} if method == "hierarchical" else {}
        cfg = method_config(method, target_macs=0.6, calibration=64, batch_size=8, **extra)
        pruned = chanprune.prune(model, cfg, data=(x, y), example_inputs=x[:1])
        out["pruned"][method] = ([g["kept"] for g in pruned.chanprune_history[-1]["groups"]], _numpy(pruned.state_dict()))
    return out


def trp_run():
    """A short TRP fine-tune: the projection acts on every rank's weights, the sub-gradient survives DDP's averaging."""
    from chanprune.lowrank import TRPConfig, trp_train

    torch.set_num_threads(1)
    model = _lenet()
    trp_train(model, chanprune.load_data("digits"), TRPConfig(period=2, nuclear_weight=1e-2),
              TrainConfig(**dict(FT, epochs=1, limit_train=128)), progress=False, eval_each_epoch=False)
    return _numpy(model.state_dict())


def everything():
    """What each process computes for the tests below (one start of the 2 processes serves them all)."""
    return {**statistics_and_decisions(), "finetune": finetune_run(), "trp": trp_run()}


@pytest.fixture(scope="module")
def one_and_two():
    return everything(), run_ranks(everything, 2)


def _close(a, b, what, rtol=1e-9, atol=1e-12):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = float(a.abs().max()) if a.numel() else 0.0
    assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol * (1 + scale)), f"{what} differs"


def test_statistics_match_one_process(one_and_two):
    one, (r0, r1) = one_and_two
    for reading, groups in one["grams"].items():
        for g, (gram, col, n) in groups.items():
            for rank_out in (r0, r1):
                gram2, col2, n2 = rank_out["grams"][reading][g]
                assert n2 == n and (reading.startswith("feature") or n == 64)
                _close(gram, gram2, f"{reading} Gram of group {g}")
                _close(col, col2, f"{reading} column sums of group {g}")
    for name, (mu, sigma, count) in one["moments"].items():
        mu2, sigma2, count2 = r1["moments"][name]
        assert count2 == count
        _close(mu, mu2, f"mean input of {name}")
        _close(sigma, sigma2, f"input moments of {name}")
    for name, rows in one["rows"].items():
        assert (rows == r0["rows"][name]).all() and (rows == r1["rows"][name]).all(), f"CP rows of {name}"
    for g, maps in one["hrank"].items():
        assert (maps == r1["hrank"][g]).all(), f"HRank ranks of group {g}"
    for name, score in one["mseb"].items():
        _close(score, r0["mseb"][name], f"UCP's mean excitation of {name}")


@pytest.mark.parametrize("method", ["hierarchical", "cp", "cap"])
def test_pruning_decision_and_weights_match_one_process(one_and_two, method):
    one, (r0, r1) = one_and_two
    kept, weights = one["pruned"][method]
    assert r0["pruned"][method][0] == r1["pruned"][method][0] == kept
    for name, w in weights.items():
        assert (r0["pruned"][method][1][name] == r1["pruned"][method][1][name]).all(), f"ranks differ in {name}"
        _close(w, r0["pruned"][method][1][name], f"{method}: {name}", rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------- training (DDP)

FT = dict(epochs=2, lr=0.05, batch_size=32, limit_train=256, augment=True, seed=0, device="cpu")


def _lenet():
    torch.manual_seed(0)
    return chanprune.create_model("lenet5", num_classes=10, in_channels=1, bn=False)  # BN would see each rank's share


def finetune_run():
    torch.set_num_threads(1)
    model = _lenet()
    history = train(model, chanprune.load_data("digits"), TrainConfig(**FT), progress=False)
    return _numpy(model.state_dict()), [e["loss"] for e in history["epochs"]], history["test_accuracy"], history["processes"]


def test_two_process_finetune_matches_one_process(one_and_two):
    one, ranks = one_and_two
    weights, losses, acc, procs = one["finetune"]
    assert procs == 1
    ranks = [r["finetune"] for r in ranks]
    for w2, losses2, acc2, procs2 in ranks:
        assert procs2 == 2
        assert losses2 == pytest.approx(losses, rel=1e-4)
        assert acc2 == pytest.approx(acc, abs=0.6)  # a one-image flip on ~360 test images at most
        for name, w in weights.items():
            _close(w, w2[name], f"fine-tuned {name}", rtol=1e-4, atol=1e-5)
    assert all((ranks[0][0][k] == ranks[1][0][k]).all() for k in weights), "the two ranks' weights differ"


def test_two_process_trp_matches_one_process(one_and_two):
    one, ranks = one_and_two
    for r in ranks:
        for name, w in one["trp"].items():
            _close(w, r["trp"][name], f"TRP-trained {name}", rtol=1e-4, atol=1e-5)


KILL = dict(FT, epochs=3, checkpoint_every=1)
WORKER = f"""
import os, sys, time, torch
torch.set_num_threads(1)
import chanprune
from chanprune import distributed
from chanprune.engine import TrainConfig, train
distributed.init_from_env()
open(sys.argv[1] + f".pid{{distributed.rank()}}", "w").write(str(os.getpid()))
torch.manual_seed(0)
model = chanprune.create_model("lenet5", num_classes=10, in_channels=1, bn=False)
slow = lambda info: time.sleep(float(sys.argv[2]))  # leaves time to kill the run between two steps
train(model, chanprune.load_data("digits"), TrainConfig(**{KILL!r}), checkpoint_dir=sys.argv[1], progress=False,
      eval_each_epoch=False, callback=slow)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_killed_two_process_run_resumes_with_one(tmp_path):
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           sys.executable, "-c", WORKER, str(state), "0.3"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, step = time.time() + TIMEOUT, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                saved = json.loads((state / "train_state.json").read_text())
                step = saved["global_step"]
            except (OSError, ValueError, KeyError):
                step = 0
            if step >= 10:  # inside the second epoch (8 steps per epoch)
                break
            time.sleep(0.1)
    finally:  # torchrun starts its workers in sessions of their own: kill them, then torchrun
        for pidfile in tmp_path.glob("state.pid*"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert 10 <= step < 24, f"the run was not caught mid-way (step {step}):\n{out[-2000:]}"
    saved = json.loads((state / "train_state.json").read_text())
    assert saved["global_step"] >= 10 and not saved["complete"]

    model = _lenet()
    history = train(model, chanprune.load_data("digits"), TrainConfig(**KILL), checkpoint_dir=state, progress=False,
                    eval_each_epoch=False)
    assert history["resumed_from"]["global_step"] == saved["global_step"] and history["processes"] == 1
    reference = _lenet()
    train(reference, chanprune.load_data("digits"), TrainConfig(**KILL), progress=False, eval_each_epoch=False)
    for name, w in reference.state_dict().items():
        _close(w, model.state_dict()[name], f"resumed {name}", rtol=1e-4, atol=1e-5)


def test_cli_finetune_with_nproc_runs_under_torchrun(tmp_path):
    model = _lenet()
    chanprune.save(model, tmp_path / "dense", extra={"data": "digits"})
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "chanprune", "finetune", str(tmp_path / "dense"), "--data", "digits", "--epochs", "1",
           "--limit", "128", "--batch-size", "32", "--device", "cpu", "--nproc", "2", "--out", str(out)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "record.json").read_text())
    assert record["processes"] == 2 and record["device"] == "cpu"
    assert chanprune.load(out / "model") is not None
    assert done.stdout.count("Fine-tuned") == 1  # rank 0 prints, rank 1 is quiet
