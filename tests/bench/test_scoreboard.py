"""bench/scoreboard.py: Torch-Pruning bisection, failed rows, resumable results, row claims."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import calib


def fake_ctx(sb, name="resnet20"):
    from chanprune.measurement import count_macs_params

    import chanprune

    torch.manual_seed(0)
    model = chanprune.create_model(name, num_classes=10, in_channels=1).eval()  # full width: fine channel steps
    x, y = calib(32)
    example = x[:1].clone()
    count = lambda m: count_macs_params(m, example)  # noqa: E731
    macs, params = count(model)
    recipe = sb._merge(sb.RECIPE, {"calibration_images": 32, "seeds": [0]})
    return SimpleNamespace(dense=model, example=example, calib_batches=[(x[:16], y[:16]), (x[16:], y[16:])],
                           calib_pair=(x, y), num_classes=10, count=count, dense_macs=macs, dense_params=params,
                           recipe=recipe, test_n=32, model_name=name, data_name="random",
                           accuracy=lambda m: 50.0, recalibrate=lambda m: 32,
                           latency=lambda m: {"b1": {"speedup": 1.5}, "b32": {"speedup": 2.0}})


@pytest.mark.parametrize("mid", ["tp.l1", "tp.l2_global", "tp.taylor", "tp.hessian"])
def test_tp_bisection_lands_on_the_target_and_leaves_the_dense_model_alone(sb, mid):
    ctx = fake_ctx(sb)
    before = {k: v.clone() for k, v in ctx.dense.state_dict().items()}
    out = sb.tp_method(mid).run(ctx, 0.5, None)
    macs, _ = ctx.count(out.model)
    assert abs(macs / ctx.dense_macs - 0.5) <= ctx.recipe["accept_tolerance"] * 0.5
    assert 0 < out.info["pruning_ratio"] < 1
    assert out.search_seconds >= out.prune_seconds > 0
    assert all(torch.equal(before[k], v) for k, v in ctx.dense.state_dict().items())
    assert all(p.grad is None for p in ctx.dense.parameters())
    y = out.model(ctx.example)
    assert y.shape == (1, 10)
    if mid == "tp.hessian":
        assert out.info["hessian_samples_fed"] == 32


def test_tp_rounding_gives_multiples(sb):
    ctx = fake_ctx(sb)
    out = sb.tp_method("tp.l1").run(ctx, 0.5, 4)
    convs = [m for m in out.model.modules() if isinstance(m, torch.nn.Conv2d)]
    pruned = [c.out_channels for c in convs if c.out_channels not in (16, 32, 64)]
    assert all(c % 4 == 0 for c in pruned)


def test_unreachable_target_is_a_failed_row_not_a_crash(sb):
    ctx = fake_ctx(sb)
    method = sb.ours_method("ours.hierarchical", "hierarchical", {})
    row = sb.run_row(ctx, method, 0.001, None, finetune=False)
    assert row["status"] == "failed"
    assert "\n" not in row["reason"] and len(row["reason"]) > 10


def test_run_row_records_the_fields(sb):
    ctx = fake_ctx(sb)
    row = sb.run_row(ctx, sb.tp_method("tp.l1"), 0.5, None, finetune=False)
    assert row["status"] == "ok"
    for key in ("macs", "params", "macs_ratio", "accuracy_before_bn", "accuracy_no_ft", "latency", "prune_seconds",
                "calibration_images", "seed", "within_tolerance"):
        assert key in row
    json.dumps(row, allow_nan=False)


def test_results_resume_and_attempts(sb, tmp_path):
    path = tmp_path / "s.json"
    res = sb.Results(path, {"model": "m"})
    res.add({"key": "a", "status": "ok"})
    assert res.attempt("b") == 1 and res.attempt("b") == 2
    again = sb.Results(path, {"model": "m"})
    assert again.keys() == {"a"} and again.doc["attempts"]["b"] == 2
    again.add({"key": "a", "status": "failed"})
    assert [r["status"] for r in sb.Results(path, {}).doc["rows"]] == ["failed"]


def test_two_writers_of_one_file_keep_each_others_rows(sb, tmp_path):
    """Two processes filling one model's file: each write merges with what the other wrote since."""
    path = tmp_path / "s.json"
    a, b = sb.Results(path, {"model": "m"}), sb.Results(path, {"model": "m"})
    a.add({"key": "x", "status": "ok"})
    b.add({"key": "y", "status": "ok"})   # b never read x
    a.log_invocation({"rows_computed": 1})
    b.log_invocation({"rows_computed": 1})
    doc = sb.Results(path, {}).doc
    assert {r["key"] for r in doc["rows"]} == {"x", "y"} and len(doc["invocations"]) == 2
    first = sb._try_lock(path, "x")
    assert first is not None and sb._try_lock(path, "x") is None   # a row runs in one process only
    other = sb._try_lock(path, "y")
    assert other is not None
    first.close(), other.close()
    again = sb._try_lock(path, "x")
    assert again is not None
    again.close()


def test_waiting_for_a_row_blocks_until_its_holder_is_done(sb, tmp_path):
    """A fallback row (+exceed) waits for its parent row running in another process before reading its verdict."""
    import threading
    import time

    path = tmp_path / "s.json"
    holder = sb._try_lock(path, "parent")
    waited = []
    t = threading.Thread(target=lambda: waited.append(sb._try_lock(path, "parent", wait=True)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not waited   # still blocked by the holder
    holder.close()
    t.join(5)
    assert waited and waited[0] is not None
    waited[0].close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_missing_cuda_for_the_fine_tunes_is_one_clear_line(sb, capsys):
    assert sb.main(["--finetune-device", "cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--finetune-device:") and "CUDA is not available" in err and "\n" not in err
