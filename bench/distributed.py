"""1 vs 2 processes (torch.distributed, gloo, CPU) for the analysis of ResNet-56 and a fine-tune epoch.

    python -m bench.distributed [--repeats 1] [--analysis-images 2048] [--finetune-images 2048]

For the shipped ResNet-56 (Fashion-MNIST) each *trial* starts ``torchrun --nproc_per_node P`` with P = 1 or 2
and, inside the workers (one torch thread each), times
  1. the effective-filter analysis (gate reading: one backward pass per batch, K_l = G_lᵀG_l all-reduced) on
     2,048 calibration images, batches of 64 — each rank takes a contiguous half of the batches;
  2. one fine-tune epoch (DDP, global batch 128, lr 0.01) over a fixed stratified training subset
     (2,048 images by default: a full 60,000-image epoch on one CPU thread takes far longer than the ~10-minute
     budget of a bench here) — each rank takes half of every global batch; and
  3. the test evaluation that ends a fine-tune (10,000 test images; the ranks take turns over the batches).
BatchNorm in training normalises over each rank's share of the batch (plain DDP), so the 2-process fine-tune
is not the 1-process one to float tolerance on this BN network; tests/test_distributed.py checks that
equivalence on a network without BN.
Trials run interleaved (1, 2, 2, 1, ... processes), so a slow drift of the machine hits both counts alike; the
JSON holds every trial's seconds and the ratio of the medians (1-process time / 2-process time = speed-up).
It also records whether both counts found the same effective filters and reached the same fine-tuned loss.
Process start-up (imports, rendezvous) is not timed: the clocks start after the process group is up.

The machine these numbers come from is shared (2 cores, several other jobs): a speed-up near 2 is not to be
expected there, and the JSON records the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "distributed.json"
CHECKPOINT = ROOT / "checkpoints" / "resnet56_fashion_mnist" / "model"


def worker(args) -> None:
    """One process of a trial (run by torchrun); rank 0 writes the timings to ``args.result``."""
    import torch

    torch.set_num_threads(1)
    import chanprune
    from chanprune import distributed
    from chanprune.analysis import AnalysisConfig

    distributed.init_from_env()
    data = chanprune.load_data("fashion_mnist")
    model = chanprune.load(str(CHECKPOINT)).eval()
    distributed.barrier()
    t0 = time.perf_counter()
    result = chanprune.analyze(model, data, AnalysisConfig(reading="gate", threshold=0.99, calibration=args.analysis_images,
                                                            batch_size=64))
    distributed.barrier()
    t_analysis = time.perf_counter() - t0
    history = chanprune.finetune(model, data, epochs=1, lr=0.01, batch_size=128, limit_train=args.finetune_images,
                                 progress=False, eval_each_epoch=False, device="cpu")
    distributed.barrier()
    t_finetune_and_test = time.perf_counter() - t0 - t_analysis
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({
            "processes": distributed.world_size(), "analysis_seconds": t_analysis,
            "finetune_epoch_seconds": history["time_s"], "test_evaluation_seconds": t_finetune_and_test - history["time_s"],
            "effective": result.effective,
            "max_compression_macs": result.max_compression_macs, "finetune_loss": history["epochs"][-1]["loss"],
            "finetune_steps": history["steps_per_epoch"]}))


def trial(processes: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "bench.distributed", "--worker", "--result", str(result),
               "--analysis-images", str(args.analysis_images), "--finetune-images", str(args.finetune_images)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        row = json.loads(result.read_text())
        row["wall_seconds_with_startup"] = time.perf_counter() - t0
        return row


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=1, help="trials per process count (interleaved 1, 2, 2, 1, ...)")
    p.add_argument("--analysis-images", type=int, default=2048)
    p.add_argument("--finetune-images", type=int, default=2048)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    order = []
    for r in range(args.repeats):
        order += [1, 2] if r % 2 == 0 else [2, 1]
    load_before = os.getloadavg()
    rows = []
    for processes in order:
        rows.append(trial(processes, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "effective"}), flush=True)
    by = {n: [r for r in rows if r["processes"] == n] for n in (1, 2)}
    summary = {}
    for part in ("analysis_seconds", "finetune_epoch_seconds", "test_evaluation_seconds"):
        m1, m2 = median([r[part] for r in by[1]]), median([r[part] for r in by[2]])
        summary[part.replace("_seconds", "")] = {"one_process_s": m1, "two_processes_s": m2, "speedup": m1 / m2}
    summary["same_effective_filters"] = all(r["effective"] == by[1][0]["effective"] for r in rows)
    summary["finetune_loss"] = {str(n): [r["finetune_loss"] for r in by[n]] for n in (1, 2)}
    sys.path.insert(0, str(ROOT))
    from bench.harness import versions

    record = {
        "command": "python -m bench.distributed " + " ".join(a for a in sys.argv[1:]),
        "model": "resnet56_fashion_mnist (shipped checkpoint)", "backend": "gloo (CPU)", "threads_per_process": 1,
        "analysis": {"reading": "gate", "images": args.analysis_images, "batch_size": 64},
        "finetune": {"images": args.finetune_images, "global_batch": 128, "epochs": 1,
                     "note": "BatchNorm sees each rank's share of a batch, so 1- and 2-process losses differ"},
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "note": "shared machine: other jobs ran during the trials"},
        "summary": summary, "trials": rows, "versions": versions(),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
