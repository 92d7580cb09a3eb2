"""UCP against chanprune's other methods at equal MACs and an equal training budget (issue 20).

    python bench/ucp.py checkpoints/resnet20_mnist/model --data mnist --targets mean 0.5 0.33 \
        --recoveries scratch finetune compensate --mseb-epochs 1 --retrain-epochs 3

For each target (``mean``: the paper's rule, whatever MACs it lands at; a number: that fraction of the MACs
kept) and each UCP recovery it prunes the checkpoint with UCP; then every baseline (hierarchical and CaP,
both with the closed-form refit and BatchNorm re-estimation) is pruned to the MACs that UCP reached and
fine-tuned for the same number of epochs UCP trained in all (MSEB training + retraining), at the fine-tune
learning rate. Test accuracy is on the data set's full test split unless ``--test-limit``.

Every row lands in the JSON file as soon as it is done (atomic rewrite), and rows already there are skipped,
so an interrupted run resumes at the row it stopped in.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import chanprune
from chanprune._atomic import write_text_atomic
from chanprune.methods.cap import CaPConfig
from chanprune.methods.hierarchical import HierarchicalConfig
from chanprune.methods.ucp import UCPConfig

BASELINES = {
    "hierarchical+compensate": lambda target, seed: HierarchicalConfig(target_macs=target, recover="compensate+bn", seed=seed),
    "cap": lambda target, seed: CaPConfig(target_macs=target, recover="bn", seed=seed),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="saved model stem, e.g. checkpoints/resnet20_mnist/model")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--targets", nargs="+", default=["mean", "0.5", "0.33"])
    p.add_argument("--recoveries", nargs="+", default=["scratch", "finetune", "compensate"])
    p.add_argument("--mseb-epochs", type=int, default=1)
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--limit-train", type=int, default=None, help="train on a stratified subset of this many images")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--baselines", nargs="*", default=list(BASELINES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/ucp_<checkpoint folder>.json)")
    return p.parse_args(argv)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": {}}


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    stem = Path(args.checkpoint)
    out = Path(args.out) if args.out else Path("bench/results") / f"ucp_{stem.parent.name}.json"
    results = _load(out)
    results["setup"] = {"checkpoint": str(stem), "data": args.data, "mseb_epochs": args.mseb_epochs,
                        "retrain_epochs": args.retrain_epochs, "finetune_lr": args.finetune_lr,
                        "limit_train": args.limit_train, "test_limit": args.test_limit, "threads": args.threads,
                        "versions": {"torch": torch.__version__, "chanprune": chanprune.__version__,
                                     "python": platform.python_version()}}
    data = chanprune.load_data(args.data)
    dense = chanprune.load(str(stem))
    if "dense" not in results:
        results["dense"] = chanprune.evaluate(dense, data, limit=args.test_limit)["accuracy"]

    def save():
        write_text_atomic(out, json.dumps(results, indent=1))

    def accuracy(model) -> float:
        return chanprune.evaluate(model, data, limit=args.test_limit)["accuracy"]

    for seed in args.seeds:
        for target in args.targets:
            for recovery in args.recoveries:
                key = f"ucp|{target}|{recovery}|{seed}"
                if key in results["rows"]:
                    continue
                rule = {"rule": "mean"} if target == "mean" else {"rule": "target", "target_macs": float(target)}
                config = UCPConfig(**rule, mseb_epochs=args.mseb_epochs, recovery=recovery,
                                   retrain_epochs=args.retrain_epochs if recovery != "compensate" else 0,
                                   retrain_lr=args.finetune_lr, limit_train=args.limit_train, seed=seed)
                t0 = time.time()
                pruned = chanprune.prune(dense, config, data=data)
                record = pruned.chanprune_history[-1]
                results["rows"][key] = {
                    "method": "ucp", "target": target, "recovery": recovery, "seed": seed,
                    "accuracy": accuracy(pruned), "macs": record["macs"], "params": record["params"],
                    "structure": record.get("ucp_structure"), "ucp": record.get("ucp"),
                    "kept": [g["kept"] for g in record["groups"]], "seconds": time.time() - t0}
                save()
                print(key, f"{results['rows'][key]['accuracy']:.2f}%", f"MACs {record['macs']['kept']:.1%}", flush=True)
            macs_reached = [r["macs"]["kept"] for k, r in results["rows"].items()
                            if k.startswith(f"ucp|{target}|") and r["seed"] == seed]
            if not macs_reached:
                continue
            epochs = args.mseb_epochs + args.retrain_epochs
            for name in args.baselines:
                key = f"{name}|{target}|finetune{epochs}|{seed}"
                if key in results["rows"]:
                    continue
                t0 = time.time()
                try:
                    pruned = chanprune.prune(dense, BASELINES[name](macs_reached[0], seed), data=data)
                except chanprune.ChanpruneError as exc:
                    results["rows"][key] = {"method": name, "target": target, "seed": seed, "refused": str(exc)}
                    save()
                    continue
                record = pruned.chanprune_history[-1]
                no_ft = accuracy(pruned)
                chanprune.finetune(pruned, data, epochs=epochs, lr=args.finetune_lr, limit_train=args.limit_train,
                                   seed=seed, progress=False, eval_each_epoch=False)
                results["rows"][key] = {
                    "method": name, "target": target, "recovery": f"finetune {epochs} epoch(s)", "seed": seed,
                    "accuracy_no_finetune": no_ft, "accuracy": accuracy(pruned), "macs": record["macs"],
                    "params": record["params"], "seconds": time.time() - t0}
                save()
                print(key, f"{results['rows'][key]['accuracy']:.2f}%", f"MACs {record['macs']['kept']:.1%}", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
