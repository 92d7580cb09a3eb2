"""bench/scoreboard.py: Torch-Pruning bisection, failed rows, the recovery protocol's selection and runs."""
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
    recipe = sb.merge(sb.RECIPE, {"calibration_images": 32, "seeds": [0]})
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
    for key in ("macs", "params", "macs_kept", "accuracy_before_bn", "accuracy_no_ft", "latency", "prune_seconds",
                "calibration_images", "seed", "within_tolerance"):
        assert key in row
    json.dumps(row, allow_nan=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_missing_cuda_for_the_fine_tunes_is_one_clear_line(sb, capsys):
    assert sb.main(["--finetune-device", "cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--finetune-device:") and "CUDA is not available" in err and "\n" not in err


def _sel_row(method, family, target, nf=None, ft=None, std=0.0, status="ok", round_to=None, n=10000):
    r = {"key": f"{target:.2f}|{method}|round_to={round_to}", "method": method, "family": family,
         "target_macs": target, "round_to": round_to, "status": status, "test_images": n}
    if nf is not None:
        r["accuracy_no_ft"] = nf
    if ft is not None:
        r["accuracy_ft"] = {"mean": ft, "std": std}
    return r


def test_selection_takes_the_best_of_each_family_per_target_and_names_ties_at_the_cut(sb):
    rows = [_sel_row("ours.a", "chanprune", 0.5, 90.0), _sel_row("ours.b", "chanprune", 0.5, 89.0),
            _sel_row("ours.c", "chanprune", 0.5, 88.9),                     # within one SE of ours.b: a tie at the cut
            _sel_row("ours.d", "chanprune", 0.5, 99.0, status="failed"),    # failed rows never count
            _sel_row("ours.e", "chanprune", 0.5, 99.0, round_to=8),         # nor the round_to study
            _sel_row("tp.x", "torch-pruning", 0.5, 70.0), _sel_row("tp.y", "torch-pruning", 0.5, 80.0),
            _sel_row("tp.z", "torch-pruning", 0.5, 60.0), _sel_row("tp.x", "torch-pruning", 0.33, 50.0)]
    sel = {(s["target_macs"], s["family"]): s for s in sb.select_rows(rows, 2, "no_ft")}
    assert sel[0.5, "chanprune"]["chosen"] == ["ours.a", "ours.b"]
    assert sel[0.5, "chanprune"]["tied_with_last_chosen"] == ["ours.c"]
    assert sel[0.5, "torch-pruning"]["chosen"] == ["tp.y", "tp.x"] and not sel[0.5, "torch-pruning"]["tied_with_last_chosen"]
    assert sel[0.33, "torch-pruning"]["chosen"] == ["tp.x"] and (0.33, "chanprune") not in sel
    ft_rows = [_sel_row("ours.a", "chanprune", 0.5, 90.0, ft=92.0, std=0.1),
               _sel_row("ours.b", "chanprune", 0.5, 80.0, ft=92.5, std=0.1),
               _sel_row("ours.c", "chanprune", 0.5, 95.0)]                   # not fine-tuned: not a candidate
    (only,) = sb.select_rows(ft_rows, 1, "ft")
    assert only["chosen"] == ["ours.b"] and only["tied_with_last_chosen"] == []


def test_protocol_b_needs_the_rows_it_picks_from(sb, tmp_path, capsys):
    assert sb.main(["--protocol", "b", "--zoo", str(tmp_path), "--models", "resnet20_fashion_mnist",
                    "--finetune-device", "cpu"]) == 0   # nothing in this zoo: skipped, no rows to pick from needed
    (tmp_path / "resnet20_fashion_mnist").mkdir()
    (tmp_path / "resnet20_fashion_mnist" / "model.json").write_text("{}")
    assert sb.main(["--protocol", "b", "--zoo", str(tmp_path), "--models", "resnet20_fashion_mnist",
                    "--finetune-device", "cpu", "--dry-run"]) == 2
    assert "run --protocol a first" in capsys.readouterr().err


def test_protocols_a_then_b_on_a_tiny_zoo(sb, report, tiny_zoo, tmp_path, monkeypatch):
    """(a) scores every method without a fine-tune; (b) fine-tunes the two best of each family with every seed,
    in its own file, and a rerun of either computes nothing."""
    monkeypatch.setitem(sb.PROTOCOL_RECIPE, "test_images", 200)
    monkeypatch.setitem(sb.PROTOCOL_RECIPE, "latency", {**sb.RECIPE["latency"], "repeats": 2, "warmup": 1})
    monkeypatch.setitem(sb.PROTOCOL_RECIPE, "finetune",
                        {**sb.PROTOCOL_RECIPE["finetune"], "train_images": 128, "batch_size": 64})
    monkeypatch.setitem(sb.PROTOCOL_RECIPE, "seeds", [0, 1])
    common = ["--zoo", str(tiny_zoo), "--models", "resnet20_digits", "--targets", "0.5", "--finetune-device", "cpu",
              "--calibration-images", "64",
              "--methods", "tp.l1_global,tp.l2_global,ours.hierarchical+compensate,ours.hierarchical+compensate+exceed,"
                           "ours.l1+compensate"]
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    assert sb.main(common + ["--protocol", "a", "--out", str(a_dir)]) == 0
    a = json.loads((a_dir / "scoreboard_resnet20_digits.json").read_text())
    assert a["recipe"]["protocol"]["name"] == "a" and "finetune" not in a["recipe"]
    assert len(a["rows"]) == 5 and all("accuracy_ft" not in r for r in a["rows"])  # +exceed: its parent refused 50 %
    assert all(sum(r["status"] == "ok" and r["family"] == f for r in a["rows"]) >= 2
               for f in ("chanprune", "torch-pruning"))
    assert all(r["bn_images"] == 64 and r["test_images"] == 200 for r in a["rows"] if r["status"] == "ok")

    wrong = [a for a in common if a not in ("--calibration-images", "64")] + ["--calibration-images", "32"]
    assert sb.main(wrong + ["--protocol", "b", "--out", str(b_dir), "--select-from", str(a_dir)]) == 2
    b_args = [a for a in common if a not in ("--calibration-images", "64")]   # (b) takes (a)'s 64 images itself
    assert sb.main(b_args + ["--protocol", "b", "--out", str(b_dir), "--select-from", str(a_dir)]) == 0
    b = json.loads((b_dir / "scoreboard_resnet20_digits.json").read_text())
    chosen = {m for s in b["selection"] for m in s["chosen"]}
    want = {m for s in sb.select_rows(a["rows"], 2, "no_ft") for m in s["chosen"]}
    assert chosen == want and len(chosen) == 4 and {r["method"] for r in b["rows"]} == chosen
    for r in b["rows"]:
        assert r["accuracy_ft"]["seeds"] == [0, 1] and len(r["accuracy_ft"]["values"]) == 2
        assert r["selected_from"]["same_macs"] and r["latency"] == next(x["latency"] for x in a["rows"]
                                                                         if x["key"] == r["key"])
    assert b["recipe"]["finetune"]["epochs"] == 1 and b["recipe"]["finetune"]["train_images"] == 128
    assert b["recipe"]["calibration_images"] == 64 and all(r["bn_images"] == 64 for r in b["rows"])
    assert report.verdicts(b)[0]["ft"]["verdict"] in ("win", "tie", "loss")

    assert sb.main(common + ["--protocol", "b", "--out", str(b_dir), "--select-from", str(a_dir)]) == 0
    assert json.loads((b_dir / "scoreboard_resnet20_digits.json").read_text())["invocations"][-1]["rows_computed"] == 0
