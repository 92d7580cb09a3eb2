"""Does the effective-filter analysis find the knee, and does hierarchical pruning win?

    python -m bench.effective_filters resnet56 [--quick]

For one shipped Fashion-MNIST checkpoint it writes bench/results/effective_<model>.json with
  1. sweep:    accuracy without fine-tuning vs kept MACs (hierarchical, allow_exceed), the analysis'
               estimated maximum, and the accuracy lost at the maximum and 15 points of MACs beyond it;
  2. readings: the network maximum under each gradient reading, against the measured knee
               (the smallest kept-MAC fraction whose no-fine-tune accuracy is within 1 point of dense);
  3. methods:  hierarchical (proportional and greedy allocation) vs uniform L1, global L1, Taylor and HRank at 50/33/25 % of the MACs —
               no fine-tune and after the same short fine-tune;
  4. cost:     analysis wall time on 512 samples (the gate reading, which needs the backward pass, and the
               default reading) / one plain forward+backward pass over them, next to one HRank feature-rank
               pass; peak resident memory of each of 5 repeated analyses (VmHWM, reset before each);
  5. prune_readings: hierarchical pruning at 50 % and 33 % of the MACs with each reading's analysis
               (no fine-tune, BN re-estimated) — which reading prunes best, hence HierarchicalConfig's default.
Parts not run keep their earlier results in the JSON (it is updated, not rewritten).
Fairness: every method gets the same checkpoint, MAC target, 512 calibration images, the same BatchNorm
re-estimation (20 batches of 64 training images) before the no-fine-tune accuracy, and the same
fine-tune (1 epoch over a fixed 5,000-image training subset, lr 0.01, cosine). Accuracy is on a fixed
stratified 2,000-image subset of the test split (seed 0). Threads: 1 per process.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from bench.harness import RESULTS, Bench, Results, in_batches, kept, versions
from chanprune import HierarchicalConfig, HRankConfig, L1Config, TaylorConfig
from chanprune.analysis import AnalysisConfig, analyze
from chanprune.errors import ChanpruneError

CALIBRATION = 512
TEST_SUBSET = 2000
FT_IMAGES = 5000
BN = {"batches": 20, "batch_size": 64}  # BatchNorm re-estimated on shuffled training batches


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class EffectiveBench(Bench):
    def __init__(self, model_name: str, quick: bool):
        super().__init__(f"{model_name}_fashion_mnist", "fashion_mnist", test_images=TEST_SUBSET,
                         calibration_images=CALIBRATION)
        self.model_name, self.model, self.quick = model_name, self.dense, quick

    def prune_row(self, config):
        pruned, record, seconds = self.prune(config)
        raw = self.accuracy(pruned)
        self.recalibrate(pruned, num_batches=BN["batches"], batch_size=BN["batch_size"], source=self.data)
        return pruned, {"macs_kept": kept(record, "macs"), "params_kept": kept(record, "params"),
                        "accuracy_raw": raw, "accuracy_no_finetune": self.accuracy(pruned), "prune_seconds": seconds,
                        "verified": record["verified"], "analysis": record.get("analysis")}

    def finetuned_accuracy(self, pruned) -> float:
        tuned, _ = self.finetuned(pruned, {"epochs": 1, "lr": 0.01, "train_images": FT_IMAGES}, device="auto")
        return self.accuracy(tuned)


def knee(dense: float, sweep: list[dict]) -> float | None:
    """Smallest kept-MAC fraction whose no-fine-tune accuracy is within 1 point of dense."""
    ok = [r["macs_kept"] for r in sweep if r["accuracy_no_finetune"] >= dense - 1.0]
    return min(ok) if ok else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--quick", action="store_true", help="fewer points, no fine-tune (smoke check)")
    p.add_argument("--parts", default="cost,sweep,readings,prune_readings,methods")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = set(args.parts.split(","))
    b = EffectiveBench(args.model, args.quick)
    res = Results(RESULTS / f"effective_{args.model}{'_quick' if args.quick else ''}.json", empty={})
    out = dict(res.doc)  # parts not run this time keep their earlier results
    out.update({"model": args.model, "data": "fashion_mnist", "calibration": CALIBRATION, "test_subset": TEST_SUBSET,
                "finetune": {"epochs": 1, "images": FT_IMAGES, "lr": 0.01}, "bn_recalibration": BN, "threads": 1,
                "versions": versions()})
    dense = b.accuracy(b.model)
    out["dense_accuracy"] = dense
    save = lambda: res.merge(out)  # noqa: E731

    x, y = b.calib_pair
    batches = in_batches(x, y)
    base_cfg = AnalysisConfig(calibration=CALIBRATION)  # the default reading and threshold
    result = analyze(b.model, batches, base_cfg)
    out["analysis_config"] = {"reading": base_cfg.reading, "rule": base_cfg.rule, "threshold": base_cfg.threshold,
                              "samples": base_cfg.calibration}
    out["analysis"] = result.to_dict(spectra=False)
    out["curve"] = result.curve([0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999])
    r_max = result.max_compression_macs
    save()

    if "cost" in parts:
        from chanprune.analysis.gradients import collect_features
        from chanprune.criteria.data_driven import map_rank
        from chanprune.graph import PruningGraph

        graph = PruningGraph(b.model, x[:1])

        def plain():
            for xb, yb in batches:
                b.model.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(b.model(xb), yb, reduction="sum").backward()
            b.model.zero_grad(set_to_none=True)

        def hrank():
            collect_features(b.model, graph, batches, lambda o: map_rank(o.clamp_min(0)))

        gate_cfg = AnalysisConfig(calibration=CALIBRATION, reading="gate", threshold=0.99)

        def ana():
            analyze(b.model, batches, gate_cfg, graph=graph)

        def ana_default():
            analyze(b.model, batches, base_cfg, graph=graph)

        arms = (("plain", plain), ("analysis", ana), ("analysis_default", ana_default), ("hrank", hrank))
        times = {name: [] for name, _ in arms}
        for _ in range(3):  # interleaved
            for name, fn in arms:
                gc.collect()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        peaks = []
        for _ in range(5):  # peak memory of each repeated (gate) analysis: a leak would make it climb
            gc.collect()
            reset_peak_rss()
            ana()
            peaks.append(peak_rss_mb())
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        out["cost"] = {"samples": CALIBRATION, "threads": torch.get_num_threads(), "median_seconds": med,
                       "analysis": "gate reading, eta 0.99 (gradient analysis)",
                       "analysis_default": f"{base_cfg.reading} reading, eta {base_cfg.threshold} (the default)",
                       "analysis_over_plain": med["analysis"] / med["plain"],
                       "analysis_default_over_plain": med["analysis_default"] / med["plain"],
                       "hrank_over_plain": med["hrank"] / med["plain"], "peak_rss_mb_each_analysis": peaks,
                       "all_seconds": times}
        save()

    if "sweep" in parts:
        keeps = [0.9, 0.7, 0.5, 0.3] if args.quick else [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.33, 0.25]
        marks = [1 - r_max, max(0.05, 1 - r_max - 0.15)]
        sweep = []
        for keep in sorted(set([round(k, 4) for k in keeps + marks]), reverse=True):
            try:
                _, r = b.prune_row(HierarchicalConfig(target_macs=keep, calibration=CALIBRATION, allow_exceed=True))
            except ChanpruneError as exc:
                r = {"error": str(exc)}
            sweep.append({"target": keep, **{k: v for k, v in r.items() if k != "analysis"}})
            out["sweep"] = sweep
            save()
        good = [s for s in sweep if "error" not in s]
        at_max = next((s for s in good if abs(s["target"] - marks[0]) < 1e-4), None)
        beyond = next((s for s in good if abs(s["target"] - marks[1]) < 1e-4), None)
        out["knee"] = {"estimated_max_kept_macs": 1 - r_max, "measured_knee_kept_macs": knee(dense, good),
                       "accuracy_lost_at_max": None if at_max is None else dense - at_max["accuracy_no_finetune"],
                       "accuracy_lost_15_beyond": None if beyond is None else dense - beyond["accuracy_no_finetune"]}
        save()

    if "readings" in parts:
        rows = []
        for reading in ("gate", "consumer_weight", "producer_weight", "feature"):
            cfg = AnalysisConfig(calibration=CALIBRATION if reading == "gate" else 256, reading=reading)
            t0 = time.perf_counter()
            r = analyze(b.model, batches[: cfg.calibration // 64], cfg)
            curve = r.curve([0.9, 0.95, 0.99, 0.999])
            rows.append({"reading": reading, "samples": cfg.calibration, "seconds": time.perf_counter() - t0,
                         "max_kept_macs_by_threshold": {str(c["threshold"]): 1 - c["max_compression_macs"] for c in curve}})
            out["readings"] = rows
            save()
        k = out.get("knee", {}).get("measured_knee_kept_macs")
        if k is not None:
            # which (reading, threshold) puts the estimated maximum closest to the measured knee?
            best = min(((abs(v - k), row["reading"], t) for row in rows for t, v in row["max_kept_macs_by_threshold"].items()))
            out["best_predictor"] = {"reading": best[1], "threshold": float(best[2]), "abs_error_kept_macs": best[0],
                                     "knee_kept_macs": k}
        save()

    if "prune_readings" in parts:
        rows = []
        settings = [("gate", 0.99), ("feature", 0.999), ("feature", 0.99), ("producer_weight", 0.999)]
        for target in (0.5, 0.33):
            for reading, threshold in settings:
                acfg = AnalysisConfig(reading=reading, threshold=threshold, calibration=CALIBRATION if reading == "gate" else 256)
                try:
                    _, r = b.prune_row(HierarchicalConfig(target_macs=target, calibration=CALIBRATION, allow_exceed=True,
                                                      analysis=acfg))
                    r.pop("analysis", None)
                except ChanpruneError as exc:
                    r = {"error": str(exc)}
                rows.append({"target": target, "reading": reading, "threshold": threshold, **r})
                out["prune_readings"] = rows
                save()

    if "methods" in parts:
        methods = {
            "hierarchical": lambda t: HierarchicalConfig(target_macs=t, calibration=CALIBRATION, allow_exceed=True),
            "hierarchical_greedy": lambda t: HierarchicalConfig(target_macs=t, calibration=CALIBRATION, allow_exceed=True,
                                                                allocation="greedy"),
            "l1_uniform": lambda t: L1Config(target_macs=t, calibration=CALIBRATION),
            "l1_global": lambda t: L1Config(target_macs=t, allocation="global", calibration=CALIBRATION),
            "taylor": lambda t: TaylorConfig(target_macs=t, calibration=CALIBRATION),
            "hrank": lambda t: HRankConfig(target_macs=t, calibration=CALIBRATION),
        }
        rows = []
        for target in ([0.5] if args.quick else [0.5, 0.33, 0.25]):
            for name, make in methods.items():
                try:
                    pruned, r = b.prune_row(make(target))
                    r.pop("analysis", None)
                    r["accuracy_finetuned"] = None if args.quick else b.finetuned_accuracy(pruned)
                except ChanpruneError as exc:
                    r = {"error": str(exc)}
                rows.append({"target": target, "method": name, **r})
                out["methods"] = rows
                save()
    print(json.dumps({k: out.get(k) for k in ("model", "dense_accuracy", "knee")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
