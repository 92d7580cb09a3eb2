"""Deployment latency: PyTorch eager vs onnxruntime, dense vs pruned, with and without latency-aware rounding.

    OMP_NUM_THREADS=1 python -m bench.deploy                 # every shipped checkpoint → bench/results/deploy.json
    python -m bench.deploy --markdown                        # the README section, from the JSON only
                                                             # (python -m bench.make_readme deploy writes it)

For each checkpoint in checkpoints/ (every zoo family shipped there):
  plain    L1 (uniform allocation) to 50 % of the MACs, widths as the allocation plans them (round_to=None);
  auto     the same with round_to="auto": the rounding (1, 4, 8, 16) whose widths measured fastest in onnxruntime
           at batch 32 on this machine, the MAC target still met (chanprune.rounding; its table is recorded).
The dense model and both pruned models are timed interleaved in one run (chanprune.measurement.latency: every
round times each (model, runtime) once per batch size, the order rotating) in PyTorch eager and in onnxruntime
(the model exported with chanprune.export and checked against PyTorch), batch 1 and 32, 1 thread, medians and
p10/p90 over the rounds. Then onnxruntime's profiler splits batch-32 time per layer (chanprune.measurement.
layer_profile) so the table says where a MAC reduction did not become a speed-up.

Accuracy is not measured here (latency depends only on the widths); the scoreboard has the accuracies.
The machine is shared (2 cores, other processes running): absolute times are noisy, so the JSON and the README
report ratios from interleaved runs — speed-up = dense median / pruned median, and that over the MAC reduction —
next to the same ratio of the p10s (the least-disturbed rounds). Each finished checkpoint is written at once and
skipped on a rerun (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "deploy.json"
CHECKPOINTS = ("resnet20_fashion_mnist", "resnet20_mnist", "resnet56_fashion_mnist", "vgg16_bn_fashion_mnist",
               "mobilenetv2_fashion_mnist")
VARIANTS = ("plain", "auto")
BACKENDS = ("eager", "onnxruntime")
BATCHES = (1, 32)


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def _save(doc: dict) -> None:
    from chanprune._atomic import write_text_atomic

    write_text_atomic(RESULTS, json.dumps(doc, indent=1))


def _machine() -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?") \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512f": " avx512f" in flags,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def run_one(name: str, repeats: int, profile_runs: int) -> dict:
    import torch

    import chanprune
    from chanprune.measurement import count_macs_params, latency, layer_profile

    t0 = time.time()
    torch.set_num_threads(1)
    dense = chanprune.load(ROOT / "checkpoints" / name / "model").eval()
    example = torch.zeros(1, 1, 28, 28)
    models = {"dense": dense}
    rounding = None
    for variant in VARIANTS:
        cfg = chanprune.L1Config(target_macs=0.5, round_to="auto" if variant == "auto" else None)
        models[variant] = chanprune.prune(dense, cfg, example_inputs=example)
        if variant == "auto":
            rounding = models[variant].chanprune_history[-1]["latency_rounding"]
    macs = {k: count_macs_params(m, example)[0] for k, m in models.items()}
    lat = latency(models, (1, 28, 28), batch_sizes=BATCHES, repeats=repeats, warmup=2, threads=1, backend=BACKENDS)
    prof = layer_profile(models, (1, 28, 28), batch=32, runs=profile_runs, threads=1)
    row = {"macs": macs, "mac_reduction": {v: macs["dense"] / macs[v] for v in VARIANTS},
           "widths": {v: [g["kept"] for g in models[v].chanprune_history[-1]["groups"]] for v in VARIANTS},
           "channels": [g["channels"] for g in models["plain"].chanprune_history[-1]["groups"]],
           "rounding": rounding, "latency": {b: {k: lat[b][k] for k in models} for b in BACKENDS},
           "speedup": {}, "speedup_p10": {}, "ratio": {}, "threads": lat["threads"], "repeats": repeats,
           "profile": prof}
    for b in BACKENDS:
        row["speedup"][b] = {v: {bs: lat[b]["speedup"][v][bs] for bs in BATCHES} for v in VARIANTS}
        row["speedup_p10"][b] = {v: {bs: lat[b]["dense"][bs]["p10_ms"] / lat[b][v][bs]["p10_ms"] for bs in BATCHES}
                                 for v in VARIANTS}
        row["ratio"][b] = {v: {bs: row["speedup"][b][v][bs] / row["mac_reduction"][v] for bs in BATCHES} for v in VARIANTS}
    row["seconds"] = time.time() - t0
    row["load_average"] = os.getloadavg()
    return row


def markdown(doc: dict) -> str:
    """The README table: speed-up (and speed-up / MAC reduction) per checkpoint, runtime, batch, rounding.

    Cells use the p10 of each model's rounds (the least disturbed tenth); the last column repeats onnxruntime's
    batch-32 speed-up from the medians, which other processes on the machine disturb more."""
    lines = ["| checkpoint | rounding | MAC reduction | eager b1 | eager b32 | onnxruntime b1 | onnxruntime b32 | "
             "onnxruntime b32, medians |", "|---|---|---|---|---|---|---|---|"]
    for name in CHECKPOINTS:
        row = doc.get("models", {}).get(name)
        if not row:
            continue
        for v in VARIANTS:
            label = "none (planned widths)" if v == "plain" else f"auto (q = {row['rounding']['chosen']})"
            red = row["mac_reduction"][v]
            cells = [f"{row['speedup_p10'][b][v][str(bs)]:.2f}× ({row['speedup_p10'][b][v][str(bs)] / red:.2f})"
                     for b in BACKENDS for bs in BATCHES]
            med = row["speedup"]["onnxruntime"][v]["32"]
            lines.append(f"| {name} | {label} | {red:.2f}× | " + " | ".join(cells) + f" | {med:.2f}× ({med / red:.2f}) |")
    return "\n".join(lines)


def _kernels(profile: dict, model: str) -> tuple[float, int, float]:
    """(ms in conv/linear kernels, MACs they executed, ms in layout reorders) of one model's batch-32 profile."""
    ms = macs = reorder = 0.0
    for row in profile["layers"]:
        entry = row.get(model)
        if not entry:
            continue
        t = entry.get("min_ms", entry["ms"])  # the fastest of the profiled runs: least disturbed by other processes
        if entry.get("weight"):
            ms += t
            macs += entry["executed_macs"]
        elif row["layer"].startswith("layout reorders"):
            reorder += t
    return ms, int(macs), reorder


def where_it_goes(doc: dict) -> str:
    """Per checkpoint, from onnxruntime's batch-32 profile: the MACs the kernels executed (padding included) against the
    model's MACs, the conv/linear kernel time against the dense model's, and the time spent changing layouts."""
    lines = ["| checkpoint | widths | model MACs (of dense) | kernels executed (of dense) | kernel time (of dense) | "
             "layout reorders, ms (dense) |", "|---|---|---|---|---|---|"]
    for name in CHECKPOINTS:
        row = doc.get("models", {}).get(name)
        if not row:
            continue
        d_ms, d_macs, d_re = _kernels(row["profile"], "dense")
        for v in VARIANTS:
            ms, macs, re_ms = _kernels(row["profile"], v)
            lines.append(f"| {name} | {'planned' if v == 'plain' else 'auto'} | {row['macs'][v] / row['macs']['dense']:.1%} | "
                         f"{macs / d_macs:.1%} | {ms / d_ms:.1%} | {re_ms:.1f} ({d_re:.1f}) |")
    return "\n".join(lines)


def section(doc: dict | None = None) -> str:
    """The README section (bench/make_readme.py 'deploy'), from bench/results/deploy.json only."""
    doc = _load() if doc is None else doc
    if not doc.get("models"):
        return "_Not run yet: `OMP_NUM_THREADS=1 python -m bench.deploy`._"
    m, c = doc["machine"], doc["config"]
    loads = [row["load_average"][0] for row in doc["models"].values()]
    out = [f"L1 (uniform) to {c['target_macs']:.0%} of the MACs on every shipped checkpoint, timed in PyTorch eager "
           f"({m['torch']}) and onnxruntime ({m['onnxruntime']}) on {m['cpu']} ({'AVX-512' if m['avx512f'] else 'AVX2'}), "
           f"{c['threads']} thread, {c['repeats']} interleaved rounds (dense, planned and auto-rounded widths alternate); "
           f"load average {min(loads):.0f}–{max(loads):.0f} on 2 cores during the runs (a shared machine: read the ratios). "
           "Each cell: speed-up over the dense model from the p10 of each model's rounds (the least disturbed tenth; "
           "medians, p10 and p90 of every model are in the JSON), in brackets speed-up ÷ MAC reduction (1.00 = all of the "
           "MAC reduction became speed).", "", markdown(doc), "",
           "Where the time goes (onnxruntime's profiler, batch 32, each kernel's fastest of "
           f"{c['profile_runs']} runs; a kernel's executed MACs include the channels onnxruntime pads to its vector "
           "block):", "", where_it_goes(doc), "", verdict(doc)]
    return "\n".join(out)


def verdict(doc: dict, goal: float = 0.8) -> str:
    """The issue's goal, counted from the rows: onnxruntime batch-32 speed-up ≥ goal × the MAC reduction (p10s)."""
    rows = {n: r for n, r in doc.get("models", {}).items()}

    def ratio(r, v):
        return r["speedup_p10"]["onnxruntime"][v]["32"] / r["mac_reduction"][v]

    plain = [ratio(r, "plain") for r in rows.values()]
    met = [n for n, r in rows.items() if ratio(r, "auto") >= goal]
    missed = [f"{n} ({ratio(r, 'auto'):.2f}; rounding to {r['rounding']['chosen']} chosen"
              + (f", {'/'.join(sorted(r['rounding']['refused'], key=int))} refused" if r["rounding"].get("refused") else "") + ")"
              for n, r in rows.items() if ratio(r, "auto") < goal]
    text = (f"onnxruntime, batch 32: with the planned widths the speed-up is {min(plain):.2f}–{max(plain):.2f} of the MAC "
            f"reduction; with latency-aware rounding {len(met)} of {len(rows)} checkpoints reach {goal:.1f} or more"
            + (f" ({', '.join(met)})" if met else "") + ".")
    if missed:
        text += (f" Below it: {', '.join(missed)} — their kernels still execute more MACs than the model keeps (the "
                 "'kernels executed' column: onnxruntime pads each conv's output channels to its vector block, 16 floats "
                 "with AVX-512), and the coarser rounding that would remove that padding was refused because it could "
                 "not meet the MAC target without moving some group more than one block from the allocation's plan.")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(CHECKPOINTS))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile-runs", type=int, default=15)
    ap.add_argument("--redo", action="store_true", help="measure checkpoints already in the JSON again")
    ap.add_argument("--markdown", action="store_true", help="print the README table from the JSON and exit")
    args = ap.parse_args()
    doc = _load()
    if args.markdown:
        print(section(doc))
        return
    doc.setdefault("models", {})
    doc["config"] = {"method": "l1 uniform", "target_macs": 0.5, "variants": VARIANTS, "backends": BACKENDS,
                     "batch_sizes": BATCHES, "threads": 1, "repeats": args.repeats, "profile_runs": args.profile_runs,
                     "input": [1, 28, 28]}
    doc["machine"] = _machine()
    for name in args.models:
        if name in doc["models"] and not args.redo:
            print(f"{name}: done (in {RESULTS.name}); --redo to measure again")
            continue
        print(f"{name}: measuring ...", flush=True)
        doc["models"][name] = run_one(name, args.repeats, args.profile_runs)
        _save(doc)
        r = doc["models"][name]
        print(f"{name}: MAC reduction plain {r['mac_reduction']['plain']:.2f}×, auto {r['mac_reduction']['auto']:.2f}×; "
              f"onnxruntime b32 speed-up plain {r['speedup']['onnxruntime']['plain'][32]:.2f}×, auto "
              f"{r['speedup']['onnxruntime']['auto'][32]:.2f}× ({r['seconds']:.0f} s)", flush=True)
    print(section(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
