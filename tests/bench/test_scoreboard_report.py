"""bench/scoreboard_report.py: verdicts, ties, the closing note, the round_to finding and the README rendering."""
from __future__ import annotations

import pytest


def test_compare_marks_ties_within_the_spread(report):
    assert report.compare((80.0, 0.5), (79.6, 0.1)) == "tie"
    assert report.compare((80.0, 0.1), (79.0, 0.3)) == "win"
    assert report.compare((78.0, 0.1), (79.0, 0.3)) == "loss"


def _row(method, family, target, ft, nf=60.0, std=0.2, status="ok", round_to=None):
    r = {"key": f"{target:.2f}|{method}|round_to={round_to}", "method": method, "family": family, "target_macs": target,
         "round_to": round_to, "status": status}
    if status != "ok":
        r["reason"] = "PruneError: nope"
        return r
    r.update(macs_kept=target, params_kept=target, accuracy_before_bn=10.0, accuracy_no_ft=nf, test_images=2000,
             accuracy_ft={"mean": ft, "std": std, "values": [ft], "seeds": [0]} if ft is not None else None,
             latency={"b1": {"speedup": 1.2}, "b32": {"speedup": 1.5}}, prune_seconds=1.0, search_seconds=1.0,
             within_tolerance=True)
    return r


def _doc(sb, rows):
    return {"model": "resnet20", "data": "fashion_mnist", "checkpoint": "checkpoints/resnet20_fashion_mnist",
            "model_kwargs": {}, "dense": {"accuracy": 88.0, "macs": 3e7, "params": 2.7e5}, "recipe": sb.RECIPE,
            "round_to_study": sb.ROUND_TO, "versions": {"torch": "t", "torch_pruning": "1.6.1", "chanprune": "0",
                                                         "cpu": "x"}, "rows": rows, "_file": "scoreboard_x.json"}


def test_verdicts_and_markdown(sb, report, tmp_path):
    rows = [_row("ours.hierarchical", "chanprune", 0.5, 85.0, nf=70.0), _row("tp.l1", "torch-pruning", 0.5, 84.9, nf=50.0),
            _row("ours.cap", "chanprune", 0.33, 70.0, nf=40.0), _row("tp.taylor", "torch-pruning", 0.33, 75.0, nf=41.0),
            _row("ours.cp", "chanprune", 0.25, None, status="failed"),
            _row("tp.l1", "torch-pruning", 0.5, None, nf=55.0, round_to=8)]
    doc = _doc(sb, rows)
    v = {x["target"]: x for x in report.verdicts(doc)}
    assert v[0.5]["ft"]["verdict"] == "tie" and v[0.5]["no_ft"]["verdict"] == "win"
    assert v[0.33]["ft"]["verdict"] == "loss" and v[0.33]["no_ft"]["verdict"] == "tie"
    plots = report.make_plots([doc], tmp_path)
    assert all(p.exists() and p.stat().st_size > 1000 for p in plots) and len(plots) == 2
    md = report.render_markdown([doc], plots, tmp_path)
    assert "| ours.hierarchical |" in md and "(tie)" in md and "refused: nope" in md
    assert "1 win, 1 tie, 1 loss;" not in md  # tallies count per target: 0.5 tie, 0.33 loss on FT
    assert "fine-tuned: 0 wins, 1 tie, 1 loss;" in md
    assert "round_to" in md and "| 8 |" in md
    assert "Not measured yet" in md  # the other models and methods are listed as missing


def test_plain_verdicts_leave_out_compensating_rows(sb, report):
    comp = _row("ours.hierarchical+compensate", "chanprune", 0.5, 86.0, nf=85.0)
    comp["call"] = {"method": "hierarchical", "recover": "compensate"}
    cp = _row("ours.cp", "chanprune", 0.5, 86.5, nf=86.0)
    cp["call"] = {"method": "cp"}
    plain = _row("ours.hierarchical", "chanprune", 0.5, 79.0, nf=70.0)
    plain["call"] = {"method": "hierarchical"}
    doc = _doc(sb, [comp, cp, plain, _row("tp.l1", "torch-pruning", 0.5, 81.0, nf=76.0, std=0.3)])
    assert report.verdicts(doc)[0]["ft"]["ours"] == "ours.cp" and report.verdicts(doc)[0]["ft"]["verdict"] == "win"
    v = report.verdicts(doc, plain=True)[0]
    assert v["ft"]["ours"] == "ours.hierarchical" and v["ft"]["verdict"] == "loss" and v["no_ft"]["verdict"] == "loss"


def test_short_reason_tells_a_refusal_from_a_crash(report):
    refusal = ("OverPruneError: the target keeps 33.0% of the MACs, but the analysis says at most 66.6% can be "
               "removed; ask for a target of at least 33.4%, or pass allow_exceed=True.")
    assert report._short_reason(refusal) == ("refused: the target keeps 33.0% of the MACs, but the analysis says at most "
                                         "66.6% can be removed")
    assert report._short_reason("RuntimeError: boom (at conv.py:3)") == "failed: boom (at conv.py:3)"


def test_same_refit_verdicts_split_the_margin(sb, report):
    """Selection vs selection under one refit; the closing note splits the lead into selection and refit parts."""
    rows = [_row("ours.hierarchical+compensate", "chanprune", 0.5, 86.0, std=0.1),
            _row("ours.l1+compensate", "chanprune", 0.5, 85.0, std=0.1),
            _row("tp.l1", "torch-pruning", 0.5, 80.0, std=0.1),
            _row("ours.hierarchical+compensate", "chanprune", 0.33, None, status="failed"),
            _row("ours.hierarchical+compensate+exceed", "chanprune", 0.33, 70.0, std=0.5),
            _row("ours.l1+compensate", "chanprune", 0.33, 70.3, std=0.1),
            _row("tp.l1", "torch-pruning", 0.33, 60.0, std=0.1)]
    doc = _doc(sb, rows)
    v = {x["target"]: x for x in report.same_refit_verdicts(doc)}
    assert v[0.5]["verdict"] == "win" and v[0.5]["diff"] == pytest.approx(1.0)
    assert v[0.33]["ours"] == "ours.hierarchical+compensate+exceed" and v[0.33]["verdict"] == "tie"
    note = report.closing_note([doc])
    # margins 6.0 and 10.0 (mean 8.0); selection +1.0 and -0.3 (mean 0.35); refit the rest
    assert "1 win (" in note and "1 tie (" in note and "0 losses" in note
    assert "by +8.00 points on average, of which +0.35 come from its selection and +7.65 from the refit" in note


def test_round_to_finding_counts_models_where_the_ratio_rose(sb, report):
    def rt_row(method, rt, macs, s1, s32):
        r = _row(method, "chanprune" if method.startswith("ours") else "torch-pruning", 0.5, None, round_to=rt)
        r.update(macs_kept=macs, latency={"b1": {"speedup": s1}, "b32": {"speedup": s32}})
        return r
    doc = _doc(sb, [rt_row("ours.hierarchical", None, 0.5, 1.2, 1.2), rt_row("ours.hierarchical", 8, 0.5, 1.0, 1.6),
                    rt_row("tp.l1", None, 0.5, 1.2, 1.2), rt_row("tp.l1", 8, 0.5, 1.0, 1.6)])
    text = report.round_to_finding([doc])
    # ratios: b1 0.6 -> 0.5, b32 0.6 -> 0.8 on the one model
    assert "round_to=8 raised the batch-32 ratio on 1 of 1 models (mean change +0.20)" in text
    assert "the batch-1 ratio on 0 of 1 (-0.10)" in text


def test_fine_tune_device_is_reported(sb, report):
    cpu = _doc(sb, [_row("ours.hierarchical", "chanprune", 0.5, 85.0), _row("tp.l1", "torch-pruning", 0.5, 84.0)])
    assert "fine-tunes included, ran on the CPU" in report.render_markdown([cpu])
    gpu_row = _row("tp.l2", "torch-pruning", 0.5, 83.0)
    gpu_row["finetune_device"] = "cuda (Test GPU)"
    md = report.render_markdown([_doc(sb, cpu["rows"] + [gpu_row])])
    assert "| tp.l2 ◊ |" in md and "| tp.l1 |" in md
    assert "except those marked ◊ (1 of 3 rows, on cuda (Test GPU))" in md


def test_hierarchical_standing_names_the_row_ahead(sb, report):
    rows = [_row("ours.hierarchical+compensate", "chanprune", 0.5, 80.0, std=0.1),
            _row("ours.cap", "chanprune", 0.5, 81.0, std=0.2), _row("tp.l1", "torch-pruning", 0.5, 70.0),
            _row("ours.hierarchical+compensate", "chanprune", 0.33, 75.0, std=0.5),
            _row("ours.cp", "chanprune", 0.33, 75.3, std=0.1)]
    doc = _doc(sb, rows)
    assert report.hierarchical_standing(doc, 0.5) == ("loss", "ours.cap", pytest.approx(1.0))
    assert report.hierarchical_standing(doc, 0.33)[0] == "tie"
    assert "best or within the seed spread of the best at 1 of 2" in report.closing_note([doc])


def test_protocol_table_puts_a_and_b_side_by_side(sb, report):
    a = _doc(sb, [_row("ours.cap", "chanprune", 0.5, None, nf=90.0), _row("tp.l1", "torch-pruning", 0.5, None, nf=80.0),
                  _row("ours.cap", "chanprune", 0.25, None, nf=60.0), _row("tp.l1", "torch-pruning", 0.25, None, nf=60.5)])
    b = _doc(sb, [_row("ours.cap", "chanprune", 0.5, 92.0, nf=90.0, std=0.3),
                  _row("tp.l1", "torch-pruning", 0.5, 91.8, nf=80.0, std=0.1)])
    table = report.protocol_table([a], [b]).splitlines()
    assert len(table) == 4   # header, rule, one line per target of (a)
    assert "| 50% | ours.cap 90.00 | tp.l1 80.00 | **win**" in table[2] and "**tie** |" in table[2]
    assert "| 25% |" in table[3] and "**tie** (±" in table[3] and table[3].endswith("| – | – | – |")
    assert report.protocol_table([], [b]) == ""


def test_plain_protocol_table_compares_selection_with_selection(sb, report):
    a = _doc(sb, [_row("ours.cap", "chanprune", 0.5, None, nf=90.0), _row("ours.hierarchical", "chanprune", 0.5, None, nf=70.0),
                  _row("tp.l1", "torch-pruning", 0.5, None, nf=80.0)])
    a["rows"][0]["call"] = {"method": "cap"}
    line = report.protocol_table([a], [], plain=True).splitlines()[2]
    assert "ours.hierarchical 70.00" in line and "tp.l1 80.00" in line and "**loss**" in line
    assert "ours.cap 90.00" in report.protocol_table([a], []).splitlines()[2]
