"""bench/scoreboard.py helpers: Torch-Pruning bisection, failed rows, resumable results, verdicts, README rendering."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import calib

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location("scoreboard", ROOT / "bench" / "scoreboard.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scoreboard"] = mod
    spec.loader.exec_module(mod)
    return mod


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


def test_compare_marks_ties_within_the_spread(sb):
    assert sb.compare((80.0, 0.5), (79.6, 0.1)) == "tie"
    assert sb.compare((80.0, 0.1), (79.0, 0.3)) == "win"
    assert sb.compare((78.0, 0.1), (79.0, 0.3)) == "loss"


def _row(method, family, target, ft, nf=60.0, std=0.2, status="ok", round_to=None):
    r = {"key": f"{target:.2f}|{method}|round_to={round_to}", "method": method, "family": family, "target_macs": target,
         "round_to": round_to, "status": status}
    if status != "ok":
        r["reason"] = "PruneError: nope"
        return r
    r.update(macs_ratio=target, params_ratio=target, accuracy_before_bn=10.0, accuracy_no_ft=nf, test_images=2000,
             accuracy_ft={"mean": ft, "std": std, "values": [ft], "seeds": [0]} if ft is not None else None,
             latency={"b1": {"speedup": 1.2}, "b32": {"speedup": 1.5}}, prune_seconds=1.0, search_seconds=1.0,
             within_tolerance=True)
    return r


def _doc(sb, rows):
    return {"model": "resnet20", "data": "fashion_mnist", "checkpoint": "checkpoints/resnet20_fashion_mnist",
            "model_kwargs": {}, "dense": {"accuracy": 88.0, "macs": 3e7, "params": 2.7e5}, "recipe": sb.RECIPE,
            "round_to_study": sb.ROUND_TO, "versions": {"torch": "t", "torch_pruning": "1.6.1", "chanprune": "0",
                                                         "cpu": "x"}, "rows": rows, "_file": "scoreboard_x.json"}


def test_verdicts_and_markdown(sb, tmp_path):
    rows = [_row("ours.hierarchical", "chanprune", 0.5, 85.0, nf=70.0), _row("tp.l1", "torch-pruning", 0.5, 84.9, nf=50.0),
            _row("ours.cap", "chanprune", 0.33, 70.0, nf=40.0), _row("tp.taylor", "torch-pruning", 0.33, 75.0, nf=41.0),
            _row("ours.cp", "chanprune", 0.25, None, status="failed"),
            _row("tp.l1", "torch-pruning", 0.5, None, nf=55.0, round_to=8)]
    doc = _doc(sb, rows)
    v = {x["target"]: x for x in sb.verdicts(doc)}
    assert v[0.5]["ft"]["verdict"] == "tie" and v[0.5]["no_ft"]["verdict"] == "win"
    assert v[0.33]["ft"]["verdict"] == "loss" and v[0.33]["no_ft"]["verdict"] == "tie"
    plots = sb.make_plots([doc], tmp_path)
    assert all(p.exists() and p.stat().st_size > 1000 for p in plots) and len(plots) == 2
    md = sb.render_markdown([doc], plots, tmp_path)
    assert "| ours.hierarchical |" in md and "(tie)" in md and "refused: nope" in md
    assert "1 win, 1 tie, 1 loss;" not in md  # tallies count per target: 0.5 tie, 0.33 loss on FT
    assert "fine-tuned: 0 wins, 1 tie, 1 loss;" in md
    assert "round_to" in md and "| 8 |" in md
    assert "Not measured yet" in md  # the other models and methods are listed as missing


def test_plain_verdicts_leave_out_compensating_rows(sb):
    comp = _row("ours.hierarchical+compensate", "chanprune", 0.5, 86.0, nf=85.0)
    comp["call"] = {"method": "hierarchical", "recover": "compensate"}
    cp = _row("ours.cp", "chanprune", 0.5, 86.5, nf=86.0)
    cp["call"] = {"method": "cp"}
    plain = _row("ours.hierarchical", "chanprune", 0.5, 79.0, nf=70.0)
    plain["call"] = {"method": "hierarchical"}
    doc = _doc(sb, [comp, cp, plain, _row("tp.l1", "torch-pruning", 0.5, 81.0, nf=76.0, std=0.3)])
    assert sb.verdicts(doc)[0]["ft"]["ours"] == "ours.cp" and sb.verdicts(doc)[0]["ft"]["verdict"] == "win"
    v = sb.verdicts(doc, plain=True)[0]
    assert v["ft"]["ours"] == "ours.hierarchical" and v["ft"]["verdict"] == "loss" and v["no_ft"]["verdict"] == "loss"


def test_short_reason_tells_a_refusal_from_a_crash(sb):
    refusal = ("OverPruneError: the target keeps 33.0% of the MACs, but the analysis says at most 66.6% can be "
               "removed; ask for a target of at least 33.4%, or pass allow_exceed=True.")
    assert sb._short_reason(refusal) == ("refused: the target keeps 33.0% of the MACs, but the analysis says at most "
                                         "66.6% can be removed")
    assert sb._short_reason("RuntimeError: boom (at conv.py:3)") == "failed: boom (at conv.py:3)"


def test_same_refit_verdicts_split_the_margin(sb):
    """Selection vs selection under one refit; the closing note splits the lead into selection and refit parts."""
    rows = [_row("ours.hierarchical+compensate", "chanprune", 0.5, 86.0, std=0.1),
            _row("ours.l1+compensate", "chanprune", 0.5, 85.0, std=0.1),
            _row("tp.l1", "torch-pruning", 0.5, 80.0, std=0.1),
            _row("ours.hierarchical+compensate", "chanprune", 0.33, None, status="failed"),
            _row("ours.hierarchical+compensate+exceed", "chanprune", 0.33, 70.0, std=0.5),
            _row("ours.l1+compensate", "chanprune", 0.33, 70.3, std=0.1),
            _row("tp.l1", "torch-pruning", 0.33, 60.0, std=0.1)]
    doc = _doc(sb, rows)
    v = {x["target"]: x for x in sb.same_refit_verdicts(doc)}
    assert v[0.5]["verdict"] == "win" and v[0.5]["diff"] == pytest.approx(1.0)
    assert v[0.33]["ours"] == "ours.hierarchical+compensate+exceed" and v[0.33]["verdict"] == "tie"
    note = sb.closing_note([doc])
    # margins 6.0 and 10.0 (mean 8.0); selection +1.0 and -0.3 (mean 0.35); refit the rest
    assert "1 win (" in note and "1 tie (" in note and "0 losses" in note
    assert "by +8.00 points on average, of which +0.35 come from its selection and +7.65 from the refit" in note


def test_round_to_finding_counts_models_where_the_ratio_rose(sb):
    def rt_row(method, rt, macs, s1, s32):
        r = _row(method, "chanprune" if method.startswith("ours") else "torch-pruning", 0.5, None, round_to=rt)
        r.update(macs_ratio=macs, latency={"b1": {"speedup": s1}, "b32": {"speedup": s32}})
        return r
    doc = _doc(sb, [rt_row("ours.hierarchical", None, 0.5, 1.2, 1.2), rt_row("ours.hierarchical", 8, 0.5, 1.0, 1.6),
                    rt_row("tp.l1", None, 0.5, 1.2, 1.2), rt_row("tp.l1", 8, 0.5, 1.0, 1.6)])
    text = sb.round_to_finding([doc])
    # ratios: b1 0.6 -> 0.5, b32 0.6 -> 0.8 on the one model
    assert "round_to=8 raised the batch-32 ratio on 1 of 1 models (mean change +0.20)" in text
    assert "the batch-1 ratio on 0 of 1 (-0.10)" in text
