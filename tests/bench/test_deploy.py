"""bench/deploy.py's README section: the ratios it prints are the ones the JSON implies."""
from __future__ import annotations


def _lat(ms):
    return {"median_ms": ms * 1.1, "p10_ms": ms, "p90_ms": ms * 1.5}


def _doc():
    lat = {b: {"dense": {"1": _lat(2.0), "32": _lat(40.0)}, "plain": {"1": _lat(2.0), "32": _lat(40.0)},
               "auto": {"1": _lat(1.0), "32": _lat(20.0)}} for b in ("eager", "onnxruntime")}
    layer = lambda ms, macs: {"ms": ms, "min_ms": ms / 2, "weight": [8, 8, 3, 3], "executed_macs": macs}  # noqa: E731
    profile = {"layers": [{"layer": "conv", "op": "Conv", "dense": layer(10.0, 1000), "plain": layer(10.0, 600),
                           "auto": layer(5.0, 500)},
                          {"layer": "layout reorders (NCHW ↔ NCHWc)", "op": "x",
                           "dense": {"ms": 0.0, "min_ms": 0.0, "weight": None, "executed_macs": 0},
                           "plain": {"ms": 2.0, "min_ms": 1.0, "weight": None, "executed_macs": 0},
                           "auto": {"ms": 0.0, "min_ms": 0.0, "weight": None, "executed_macs": 0}}]}
    row = {"macs": {"dense": 100, "plain": 50, "auto": 50}, "mac_reduction": {"plain": 2.0, "auto": 2.0},
           "rounding": {"chosen": 8}, "latency": lat, "load_average": [3.0, 3.0, 3.0], "profile": profile,
           "speedup": {b: {"plain": {"1": 1 / 1.0, "32": 1.0}, "auto": {"1": 2.0, "32": 2.0}} for b in ("eager", "onnxruntime")}}
    row["speedup_p10"] = row["speedup"]
    return {"models": {"resnet20_fashion_mnist": row},
            "machine": {"torch": "t", "onnxruntime": "o", "cpu": "cpu", "avx512f": False},
            "config": {"target_macs": 0.5, "threads": 1, "repeats": 3, "profile_runs": 3}}


def test_section_reports_speedups_and_where_the_time_goes():
    from bench.deploy import section

    text = section(_doc())
    assert "| resnet20_fashion_mnist | none (planned widths) | 2.00× | 1.00× (0.50) |" in text
    assert "| resnet20_fashion_mnist | auto (q = 8) | 2.00× | 2.00× (1.00) |" in text
    # planned widths: half the model's MACs, 60% executed (padding), kernel time as dense, 1 ms of reorders
    assert "| resnet20_fashion_mnist | planned | 50.0% | 60.0% | 100.0% | 1.0 (0.0) |" in text
    assert "| resnet20_fashion_mnist | auto | 50.0% | 50.0% | 50.0% | 0.0 (0.0) |" in text


def test_section_without_results_says_how_to_run():
    from bench.deploy import section

    assert "Not run yet" in section({})
