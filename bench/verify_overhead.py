"""What verified surgery costs: prune ResNet-56 with verify=True and verify=False, interleaved.

    python -m bench.verify_overhead [--repeats 21] [--threads 1] [--out bench/results/verify_overhead.json]
    # a third arm: any other surgery.py, e.g. one from an older commit
    git show a4f59ec:src/chanprune/surgery.py > /tmp/surgery_before.py
    python -m bench.verify_overhead --baseline-surgery /tmp/surgery_before.py --baseline-probe 8

Each repeat runs ``chanprune.prune(model, L1Config(target_macs=0.5, verify=...), data=(x, y))`` on a
ResNet-56 (1 input channel, 10 classes, 28x28 inputs; random weights and random calibration images:
the cost of surgery and verification does not depend on the values) with and without verification
(and the baseline, if given), rotating which goes first. L1 is the cheapest method, so this is the
harshest ratio. Reported: the median wall time (and process CPU time) of the whole ``prune()`` call
for each arm, their ratio (the aim: verification adds < 10 %), the median of the record's
own ``seconds["verify"]`` step, and the ``seconds`` breakdown (plan, remove, verify, total) of every run.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import chanprune
import chanprune.api as api
import chanprune.surgery as surgery
from chanprune._atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

CURRENT = api.apply_plan


def _baseline(path: str):
    """Load an older surgery.py as chanprune._baseline_surgery; return an apply_plan with today's signature."""
    spec = importlib.util.spec_from_file_location("chanprune._baseline_surgery", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)

    def apply_plan(graph, plan, original, *, verify=True, probe=None, **_):
        pruned, report = module.apply_plan(graph, plan, original, verify=verify, probe=probe)
        report.excluded = getattr(report, "excluded", [])
        return pruned, report

    return apply_plan


def one(model, data, arm: str, arms: dict) -> dict:
    apply_plan, probe_size, verify = arms[arm]
    api.apply_plan, surgery.PROBE_SIZE = apply_plan, probe_size
    cfg = chanprune.L1Config(target_macs=0.5, verify=verify, calibration=64)
    gc.collect()  # start every arm with the same heap: a collection inside one run is noise, not its cost
    t0, c0 = time.perf_counter(), time.process_time()
    pruned = chanprune.prune(model, cfg, data=data, example_inputs=data[0][:1])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    api.apply_plan = CURRENT
    rec = pruned.chanprune_history[-1]
    assert rec["verified"] is verify, rec["verified"]
    return {**rec["seconds"], "wall": wall, "cpu": cpu, "verify_max_rel_error": rec["verify_max_rel_error"],
            "macs_kept": rec["macs"]["kept"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-surgery", default=None, help="an older surgery.py to time as a third arm")
    p.add_argument("--baseline-probe", type=int, default=8, help="probe images prune() gave the baseline")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "verify_overhead.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = chanprune.create_model("resnet56", num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))

    arms = {"verify": (CURRENT, surgery.PROBE_SIZE, True), "no_verify": (CURRENT, surgery.PROBE_SIZE, False)}
    if args.baseline_surgery:
        arms["baseline_verify"] = (_baseline(args.baseline_surgery), args.baseline_probe, True)
    names = list(arms)
    for arm in names:  # warm-up (imports, allocator, first trace)
        one(model, data, arm, arms)
    runs: dict[str, list] = {a: [] for a in names}
    for r in range(args.repeats):
        for arm in names[r % len(names):] + names[: r % len(names)]:
            runs[arm].append(one(model, data, arm, arms))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{a} {runs[a][-1]['wall']:.3f} s" for a in names), flush=True)

    med = {a: {k: statistics.median(x[k] for x in runs[a]) for k in ("wall", "cpu", "verify", "plan", "remove", "total")}
           for a in names}
    off = med["no_verify"]
    record = {
        "model": "resnet56 (in_channels=1, num_classes=10), random weights", "input": [1, 28, 28],
        "config": "L1Config(target_macs=0.5, calibration=64), random calibration images; the probe is the first "
                  "PROBE_SIZE of them",
        "probe_images": {a: arms[a][1] for a in names},
        "repeats": args.repeats,
        "median_seconds": {a: med[a]["wall"] for a in names},
        "median_cpu_seconds": {a: med[a]["cpu"] for a in names},
        "ratio": {a: med[a]["wall"] / off["wall"] for a in names if a != "no_verify"},
        "cpu_ratio": {a: med[a]["cpu"] / off["cpu"] for a in names if a != "no_verify"},
        "median_verify_step_seconds": {a: med[a]["verify"] for a in names if a != "no_verify"},
        "verify_step_percent_of_unverified_prune": {a: 100 * med[a]["verify"] / off["wall"] for a in names if a != "no_verify"},
        "target": "verification adds < 10 % to the wall time of prune()",
        "baseline_surgery": args.baseline_surgery,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "note": "wall times on a shared machine are noisy (see load_average); cpu = process CPU time",
        "versions": {"chanprune": chanprune.__version__, "torch": torch.__version__,
                     "torch_pruning": __import__("torch_pruning").__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    write_text_atomic(Path(args.out), json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("median_seconds", "ratio", "cpu_ratio", "median_verify_step_seconds",
                                              "verify_step_percent_of_unverified_prune")}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
