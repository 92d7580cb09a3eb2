"""bench/cacp.py's report: the README table, the cost ratio and the per-rate gaps come from the rows alone."""
import json


def _row(key, accuracy, macs, cpu=None):
    row = {"key": key, "accuracy": accuracy, "macs_kept": macs}
    if cpu is not None:
        row.update(seconds=10 * cpu, cpu_seconds=cpu)
    return row


def test_report_computes_the_goals_from_the_rows(tmp_path):
    from bench import cacp

    rows = [{"key": "dense", "accuracy": 90.0},
            {"key": "search/cacp", "seconds": 300.0, "cpu_seconds": 30.0, "episode_seconds": 1.0},
            _row("cacp/actor/0.3", 70.0, 0.299, 4.0), _row("cacp/actor/0.5", 80.0, 0.499, 1.0),
            _row("cacp/best/0.3", 71.0, 0.298, 1.0),
            {"key": "search/amc/0.3", "seconds": 200.0, "cpu_seconds": 20.0}, _row("amc/best/0.3", 70.2, 0.299, 4.0),
            {"key": "search/amc/0.5", "seconds": 200.0, "cpu_seconds": 20.0}, _row("amc/best/0.5", 81.0, 0.5, 4.0),
            _row("uniform/0.3", 72.0, 0.3), _row("hierarchical/0.5", 79.0, 0.5), {"key": "global/0.5", "refused": "no"}]
    setup = {"support": [0.3], "export": [0.3, 0.5], "warmup": 2, "episodes": 3, "val_images": 64,
             "calibration": 256, "test_images": 1000}
    path = tmp_path / "cacp_tiny.json"
    path.write_text(json.dumps({"setup": setup, "rows": rows}))
    text = cacp.report(path, plots=tmp_path)
    assert "| 30% (support) | 70.00 (29.9%) | 71.00 (29.8%) | 70.20 (29.9%) | – | 72.00 (30.0%) | – | – |" in text
    assert "| 50% | 80.00 (49.9%) | – | 81.00 (50.0%) | – | – | refused | 79.00 (50.0%) |" in text
    # family: 30 + 4 + 1 = 35 CPU s; one dedicated search with its export: 20 + 4 = 24 s
    assert "35 s for the family" in text and "1.46× one dedicated search" in text
    assert "30%: -0.20, 50%: -1.00" in text and "at 1 of 2 rates" in text
    assert "30%: -2.00 (vs uniform), 50%: +1.00 (vs hierarchical)" in text
    assert (tmp_path / "cacp_tiny.png").exists()
