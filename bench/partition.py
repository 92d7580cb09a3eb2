"""Partition pruning on LeNet-5 and TinyVGG (Fashion-MNIST): accuracy vs P, measured and simulated latency.

    python -m bench.train_zoo lenet5 fashion_mnist --epochs 3 --limit 30000 --threads 1
    python -m bench.train_zoo tinyvgg fashion_mnist --epochs 2 --limit 20000 --lr 0.05 --threads 1
    python -m bench.partition            # all parts below; resumable (rows already in the JSON are skipped)
    python -m bench.make_readme partition   # the README section, from the JSON

1. **Accuracy**: each checkpoint's FC run (every Linear but the classifier) partitioned at P = 1, 2, 4, 8 for
   every mode × assignment, without recovery, with the per-block compensation, and with the compensation then
   the scoreboard's short fine-tune; TinyVGG also as grouped convolutions (its last two convs, P = 2, 4).
   Accuracy on the fixed stratified 2,000-image test subset, 512 calibration images (``bench.harness``).
2. **Measured latency** on this machine: the dense model, the partitioned model in one process and on P = 2
   gloo processes (one thread each), the whole model and the FC run alone, interleaved, medians.
3. **Simulated P devices**: every chain of a block-diagonal run timed alone (one thread), plus a stated link
   model for the scatter and the gather; the speed-up over the dense FC layers, to set beside the paper's 7.72×
   (TinyVGG16 on several accelerators, an accelerator-level figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import chanprune
from chanprune import PartitionConfig
from chanprune.partition.runtime import Link, PartitionedRun, run_distributed, simulate

from .harness import RESULTS, Bench, Results, versions

OUT = RESULTS / "partition.json"
MODELS = {"lenet5": "lenet5_fashion_mnist", "tinyvgg": "tinyvgg_fashion_mnist"}
PARTS = (1, 2, 4, 8)
MODES = ("block_diagonal", "block_topk", "balanced")
ASSIGNMENTS = ("contiguous", "energy")
CONV_RUN = ("features.14", "features.17")  # TinyVGG's last two convs (32 → 64 → 64 channels)
FINETUNE = {"epochs": 1, "train_images": 1000, "lr": 0.01, "schedule": "cosine", "batch_size": 64,
            "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": True}  # the scoreboard's recipe
LINKS = (Link("pcie_like", 12e9, 5e-6), Link("ethernet_1g_like", 0.125e9, 50e-6), Link("free", 1e30, 0.0))
PAPER_SPEEDUP = 7.72
BUDGET = 0.5


def accuracy_rows(bench: Bench, model: str, results: Results, quick: bool) -> None:
    parts = (1, 2) if quick else PARTS
    jobs = []
    for P in parts:
        for mode in (("block_diagonal",) if P == 1 else MODES):
            for assignment in (("contiguous",) if P == 1 else ASSIGNMENTS):
                jobs.append(("fc", P, mode, assignment, ()))
    if model == "tinyvgg" and not quick:
        for P in (2, 4):
            for assignment in ASSIGNMENTS:
                jobs.append(("conv", P, "block_diagonal", assignment, CONV_RUN))
    for run, P, mode, assignment, layers in jobs:
        key = f"{model}|{run}|P={P}|{mode}|{assignment}"
        if results.row(key) is not None:
            continue
        t0 = time.perf_counter()
        row = {"key": key, "model": model, "run": run, "parts": P, "mode": mode, "assignment": assignment,
               "budget": BUDGET if mode == "block_topk" else None, "dense_accuracy": bench.dense_accuracy}
        for recover in ("none", "compensate"):
            cfg = PartitionConfig(parts=P, layers=layers, mode=mode, assignment=assignment, budget=BUDGET,
                                  recover=recover, calibration=bench.calibration_images, seed=0)
            cut, record, seconds = bench.prune(cfg, data=bench.calib_pair)
            if run == "conv":
                bench.recalibrate(cut)  # the BatchNorms after the cut convs, on the calibration images
            row[f"accuracy_{recover}"] = bench.accuracy(cut)
            row[f"seconds_{recover}"] = seconds
            if recover == "compensate":
                tuned, ft_seconds = bench.finetuned(cut, FINETUNE, seed=0)
                row["accuracy_compensate_finetuned"] = bench.accuracy(tuned)
                row["finetune_seconds"] = ft_seconds
                row["params_kept"] = record["params"]["kept"]
                row["macs_kept"] = record["macs"]["kept"]
                row["energy_kept"] = record["partition"]["energy_kept"]
                row["exchanged_inputs"] = sum(v["exchanged_inputs"] for v in record["partition"]["layers"].values())
                row["verify_max_rel_error"] = record["verify_max_rel_error"]
        row["seconds"] = time.perf_counter() - t0
        results.add(row)
        print(f"{key}: {row['accuracy_none']:.2f} / {row['accuracy_compensate']:.2f} / "
              f"{row['accuracy_compensate_finetuned']:.2f} ({row['seconds']:.0f}s)", flush=True)


def latency_rows(bench: Bench, model: str, results: Results, rounds: int) -> None:
    for batch in (1, 32):
        key = f"{model}|latency|P=2|batch={batch}"
        if results.row(key, "latency") is not None:
            continue
        cut, _, _ = bench.prune(PartitionConfig(parts=2, recover="compensate", calibration=bench.calibration_images),
                                data=bench.calib_pair)
        x = bench.test[0][0][:batch]
        with tempfile.TemporaryDirectory() as tmp:
            chanprune.save(cut, Path(tmp) / "cut")
            chanprune.save(bench.dense, Path(tmp) / "dense")
            res = run_distributed(Path(tmp) / "cut", x, rounds=rounds, baseline=Path(tmp) / "dense", threads=1,
                                  timeout_s=120)
        with torch.no_grad():
            same = float((res.outputs - cut(x)).abs().max())
        s = res.seconds
        row = {"key": key, "model": model, "parts": 2, "batch": batch, "rounds": rounds, "seconds": s,
               "load_average_1min": os.getloadavg()[0],
               "max_abs_difference_distributed_vs_single": same,
               "fc_run": {"dense_over_single": s["run_dense"] / s["run_single"],
                          "dense_over_distributed": s["run_dense"] / s["run_distributed"],
                          "single_over_distributed": s["run_single"] / s["run_distributed"]},
               "whole_model": {"dense_over_single": s["dense"] / s["single"],
                               "dense_over_distributed": s["dense"] / s["distributed"],
                               "single_over_distributed": s["single"] / s["distributed"]}}
        results.add(row, "latency")
        print(f"{key}: {row['fc_run']} {row['whole_model']}", flush=True)


def simulation_rows(bench: Bench, model: str, results: Results, repeats: int) -> None:
    for P in (2, 4, 8):
        for batch in (1, 32):
            key = f"{model}|simulated|P={P}|batch={batch}"
            if results.row(key, "simulation") is not None:
                continue
            cut, _, _ = bench.prune(PartitionConfig(parts=P, calibration=bench.calibration_images), data=bench.calib_pair)
            run = PartitionedRun(cut, bench.example)
            seen = []
            hook = run.layers[0].register_forward_pre_hook(lambda _m, i: seen.append(i[0]))
            with torch.no_grad():
                cut(bench.test[0][0][:batch])
            hook.remove()
            dense = [bench.dense.get_submodule(n) for n in run.steps]
            sim = simulate(run, seen[0], LINKS, repeats=repeats, dense=dense)
            results.add({"key": key, "model": model, "parts": P, "batch": batch, "load_average_1min": os.getloadavg()[0],
                         **sim}, "simulation")
            best = max(v["speedup_vs_dense"] for v in sim["links"].values())
            print(f"{key}: best simulated speed-up over the dense FC layers {best:.2f}x", flush=True)


# ------------------------------------------------------------------------------------------ README section

def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def _summary(rows: list[dict]) -> str:
    """One generated sentence: the largest P's block-diagonal rows, and the best of the other modes there."""
    fc = [r for r in rows if r["run"] == "fc"]
    P = max(r["parts"] for r in fc)
    at = {(r["mode"], r["assignment"]): r for r in fc if r["parts"] == P}
    parts = []
    for assignment in ASSIGNMENTS:
        r = at.get(("block_diagonal", assignment))
        if r:
            parts.append(f"{assignment} {r['accuracy_none']:.1f}% → {r['accuracy_compensate']:.1f}% with the refit "
                         f"({r['energy_kept']:.0%} of the weight energy kept)")
    if not parts:
        return ""
    return (f"At P = {P}, block-diagonal (the model keeps {at[('block_diagonal', 'contiguous')]['params_kept']:.0%} of its parameters): "
            + "; ".join(parts) + f"; dense {rows[0]['dense_accuracy']:.1f}%.")


def readme_section(doc: dict) -> str:
    rows, lat, sim = doc.get("rows", []), doc.get("latency", []), doc.get("simulation", [])
    lines = [f"Generated by `python -m bench.make_readme partition` from `bench/results/partition.json` "
             f"(torch {doc.get('versions', {}).get('torch', '?')}, CPU only: no GPU was available to this run, so the "
             "GPU (CUDA streams / NCCL) measurements were not made). Checkpoints trained by `bench/train_zoo.py` "
             f"(commands in the zoo table). {doc.get('protocol', '')}", ""]
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        lines += [f"**{model}** (dense {mine[0]['dense_accuracy']:.2f}%): accuracy % without recovery / with the "
                  "per-block compensation / compensated then fine-tuned; params kept; diagonal energy kept", "",
                  "| run | P | mode | assignment | no recovery | compensate | + fine-tune | params kept | energy kept |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: (r["run"], r["parts"], MODES.index(r["mode"]), r["assignment"])):
            lines.append(f"| {r['run']} | {r['parts']} | {r['mode']} | {r['assignment']} | {_pct(r['accuracy_none'])} | "
                         f"{_pct(r['accuracy_compensate'])} | {_pct(r['accuracy_compensate_finetuned'])} | "
                         f"{r['params_kept']:.1%} | {r['energy_kept']:.1%} |")
        lines += ["", _summary(mine), ""]
    if lat:
        loads = [r["load_average_1min"] for r in lat if "load_average_1min" in r]
        load = f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} on 2 cores while it ran" if loads else ""
        lines += ["Measured on this machine, P = 2 gloo processes, one thread each (median of interleaved rounds"
                  f"{load}; ratios > 1 mean the right-hand form is faster):", "",
                  "| model | batch | FC run: dense / 1 process | FC run: dense / 2 processes | FC run: 1 / 2 processes "
                  "| whole model: dense / 2 processes | whole model: 1 / 2 processes |", "|---|---|---|---|---|---|---|"]
        for r in sorted(lat, key=lambda r: (r["model"], r["batch"])):
            f, w = r["fc_run"], r["whole_model"]
            cells = [f["dense_over_single"], f["dense_over_distributed"], f["single_over_distributed"],
                     w["dense_over_distributed"], w["single_over_distributed"]]
            lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(f"{_ratio(c)}×" for c in cells) + " |")
        lines.append("")
    if sim:
        names = list(sim[0]["links"])
        desc = ", ".join(f"`{n}` {v['bandwidth_GBps']:g} GB/s + {v['latency_us']:g} µs per message"
                         if v["latency_us"] or v["bandwidth_GBps"] < 1e9 else f"`{n}` no link cost"
                         for n, v in sim[0]["links"].items())
        lines += [f"Simulated P devices (block-diagonal FC run; each chain timed alone on one thread, the scatter "
                  f"and gather as P − 1 messages each over the link; links: {desc}). Speed-up of the FC run over the "
                  f"dense FC layers on one device. The paper reports {PAPER_SPEEDUP}× for TinyVGG16's partitioned FC layers on "
                  "several accelerators against the unpruned model on one; that is a hardware measurement, these are "
                  "predictions from CPU times and assumed links, not a reproduction:", "",
                  "| model | P | batch | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for r in sorted(sim, key=lambda r: (r["model"], r["batch"], r["parts"])):
            lines.append(f"| {r['model']} | {r['parts']} | {r['batch']} | "
                         + " | ".join(f"{r['links'][n]['speedup_vs_dense']:.2f}×" for n in names) + " |")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--parts", nargs="+", default=["accuracy", "latency", "simulation"])
    p.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds")
    p.add_argument("--quick", action="store_true", help="P = 1, 2 only (a smoke run)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    header = {"versions": versions(), "command": "python -m bench.partition " + " ".join(argv or sys.argv[1:]),
              "protocol": ("Accuracy on a fixed stratified 2,000-image test subset; 512 calibration images "
                           "(stratified, seed 0) for the compensation; fine-tune: 1 epoch over 1,000 training images, "
                           "lr 0.01 cosine, batch 64, SGD momentum 0.9 Nesterov, weight decay 5e-4, augmentation, "
                           f"seed 0; block_topk budget {BUDGET} of the all-to-all traffic; grouped-conv rows "
                           "re-estimate BatchNorm on the calibration images after the cut.")}
    results = Results(Path(args.out), header, empty={"rows": [], "latency": [], "simulation": []})
    for model in args.models:
        bench = Bench(MODELS[model], "fashion_mnist")
        if "accuracy" in args.parts:
            accuracy_rows(bench, model, results, args.quick)
        if "latency" in args.parts:
            latency_rows(bench, model, results, args.rounds)
        if "simulation" in args.parts:
            simulation_rows(bench, model, results, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
