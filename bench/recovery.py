"""Accuracy back without retraining — L1, hierarchical, CP, CaP, with and without compensation.

    python -m bench.recovery resnet56 [--parts main,calibration,finetune] [--quick]

For one shipped Fashion-MNIST checkpoint (resnet56, or vgg16_bn — the shipped VGG-16-BN has width 0.5)
it writes bench/results/recovery_<model>.json, one row at a time (a rerun skips rows already there):

  main         at 50 % and 33 % of the MACs, 500 calibration images, six rows:
                 l1                 uniform L1, no recovery of its own
                 l1+comp            uniform L1, then recover="compensate" (closed-form refit of every consumer)
                 hierarchical       effective-filter layer budgets + pivoted-Cholesky filters, no recovery of its own
                 hierarchical+comp  the same plan, then recover="compensate"
                 cp                 CP: LASSO selection + least-squares refit, shortcut correction in residual blocks
                 cap                CaP: compensation-aware ranking, binary structural search, compensation
               Every row is measured twice without fine-tuning: as the method returns it, and after BatchNorm
               re-estimation on the same calibration images (running statistics recomputed; nothing else).
               Per row: both accuracies, the relative reconstruction error ‖Y − Ŷ‖/‖Y‖ of every consumer
               (every conv/Linear whose inputs lost channels; Y its output after its BatchNorm, on the kept
               channels, so a bias folded into BN running means counts) on 256 held-out training images that
               are in no calibration set, the logits' error on them, wall time of prune() and of the BN pass.
                 cp-nocorr          (ResNet-56 only, no fine-tune) CP without the multi-branch shortcut correction
  calibration  at 50 % of the MACs, the same six rows with 100 and 2,000 calibration images (500 is in main);
               the sets are nested (a stratified subset of the training split, seed 0).
  finetune     every main row's model without fine-tune (the method's own recovery; for l1 and hierarchical,
               which have none, after the BN re-estimation) fine-tuned with one recipe: 1 epoch over a fixed
               stratified 2,000-image training subset (seed 0), SGD (momentum 0.9, Nesterov, weight decay
               5e-4) at lr 0.01 with a cosine schedule, batch 128, the loader's default augmentation. Each row records
               whether oneDNN was enabled during its fine-tune (finetune_onednn).

Accuracy is on a fixed stratified 2,000-image subset of the test split (seed 0). One thread per process.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time

import torch
import torch.nn as nn

from bench.harness import RESULTS, Bench, Results, in_batches, kept, versions
from chanprune import CaPConfig, CPConfig, HierarchicalConfig, L1Config
from chanprune.errors import ChanpruneError

TEST_SUBSET = 2000
CALIBRATION = 500
SIZES = (100, 2000)
HELD_OUT = 256
FT = {"epochs": 1, "images": 2000, "lr": 0.01, "batch_size": 128}
TARGETS = (0.5, 0.33)

METHODS = {
    "l1": lambda t, n: L1Config(target_macs=t, calibration=n),
    "l1+comp": lambda t, n: L1Config(target_macs=t, calibration=n, recover="compensate"),
    "hierarchical": lambda t, n: HierarchicalConfig(target_macs=t, calibration=n, allow_exceed=True),
    "hierarchical+comp": lambda t, n: HierarchicalConfig(target_macs=t, calibration=n, allow_exceed=True, recover="compensate"),
    "cp": lambda t, n: CPConfig(target_macs=t, calibration=n),
    "cap": lambda t, n: CaPConfig(target_macs=t, calibration=n),
    # ResNet only, main part only, no fine-tune: CP without the multi-branch shortcut correction
    "cp-nocorr": lambda t, n: CPConfig(target_macs=t, calibration=n, residual_correction=False),
}
EXTRA = {"cp-nocorr"}  # not fine-tuned, not in the calibration sweep
OWN_RECOVERY = {
    "l1": "none", "l1+comp": "compensation (recover='compensate')", "hierarchical": "none",
    "hierarchical+comp": "compensation (recover='compensate')", "cp": "CP's least-squares refit",
    "cap": "CaP's compensation", "cp-nocorr": "CP's least-squares refit, no shortcut correction",
}


def _digest(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images]


class RecoveryBench(Bench):
    def __init__(self, model_name: str):
        super().__init__(f"{model_name}_fashion_mnist", "fashion_mnist", test_images=TEST_SUBSET,
                         calibration_images=CALIBRATION)
        self.model = self.dense
        # held-out: training images outside the largest calibration set (the sets are nested)
        biggest = max((CALIBRATION,) + SIZES)
        used = set(_digest(self.data.train.subset(biggest, seed=0).images))
        pool = self.data.train.subset(biggest + 4 * HELD_OUT, seed=0)
        keep = [i for i, h in enumerate(_digest(pool.images)) if h not in used][:HELD_OUT]
        self.held_out = self.data.normalize(pool.images[keep])
        assert len(self.held_out) == HELD_OUT

    def calibration(self, n: int):
        return in_batches(*self.data.calibration(n, seed=0))


# --------------------------------------------------------------------------- reconstruction error


def _norm_after(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """conv/Linear name → the BatchNorm that reads its output directly (traced by tensor identity)."""
    produced: dict[int, str] = {}
    out: dict[str, str] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda _m, _i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(m, nn.BatchNorm2d):
            def pre(_m, inputs, name=name):
                src = produced.get(id(inputs[0]))
                if src is not None:
                    out[src] = name
            hooks.append(m.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x[:2])
    for h in hooks:
        h.remove()
    return out


def _kept_rows(dense_bn: nn.BatchNorm2d, pruned_bn: nn.BatchNorm2d) -> list[int] | None:
    """Which of the dense BN's channels the pruned BN kept, matched on (γ, β) — neither pruning, compensation
    nor BN re-estimation changes them. None if the match is not unique."""
    dense = {}
    for i, key in enumerate(zip(dense_bn.weight.tolist(), dense_bn.bias.tolist())):
        dense.setdefault(key, []).append(i)
    rows = []
    for key in zip(pruned_bn.weight.tolist(), pruned_bn.bias.tolist()):
        hit = dense.get(key, [])
        if len(hit) != 1:
            return None
        rows.append(hit[0])
    return rows


def reconstruction(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict:
    """Relative ‖Y − Ŷ‖/‖Y‖ of every consumer's output (after its BN, kept channels) and of the logits."""
    dm, pm = dict(dense.named_modules()), dict(pruned.named_modules())
    after = _norm_after(dense, x)
    consumers = []
    for name, m in pm.items():
        d = dm.get(name)
        if isinstance(m, nn.Conv2d) and isinstance(d, nn.Conv2d) and m.in_channels < d.in_channels:
            consumers.append(name)
        elif isinstance(m, nn.Linear) and isinstance(d, nn.Linear) and m.in_features < d.in_features:
            consumers.append(name)
    where = {n: after.get(n, n) for n in consumers}  # read the output after the BN where there is one
    rows = {}
    for n in consumers:
        if where[n] != n:
            rows[n] = _kept_rows(dm[where[n]], pm[where[n]])
        else:
            rows[n] = list(range(pm[n].weight.shape[0])) if pm[n].weight.shape[0] == dm[n].weight.shape[0] else None
    sums = {n: [0.0, 0.0] for n in consumers if rows[n] is not None}
    logits = [0.0, 0.0]
    for i in range(0, len(x), 64):
        xb = x[i : i + 64]
        got: dict[str, dict[str, torch.Tensor]] = {"d": {}, "p": {}}
        hooks = []
        for tag, mods in (("d", dm), ("p", pm)):
            for n in sums:
                hooks.append(mods[where[n]].register_forward_hook(
                    lambda _m, _i, o, n=n, tag=tag: got[tag].__setitem__(n, o.detach().double())))
        with torch.no_grad():
            yd, yp = dense(xb).double(), pruned(xb).double()
        for h in hooks:
            h.remove()
        for n, acc in sums.items():
            ref = got["d"][n][:, rows[n]]
            acc[0] += float((got["p"][n] - ref).pow(2).sum())
            acc[1] += float(ref.pow(2).sum())
        logits[0] += float((yp - yd).pow(2).sum())
        logits[1] += float(yd.pow(2).sum())
    per = {n: (a / b) ** 0.5 if b > 0 else None for n, (a, b) in sums.items()}
    vals = [v for v in per.values() if v is not None]
    return {
        "per_consumer": per, "unmatched": [n for n in consumers if rows[n] is None],
        "mean": sum(vals) / len(vals) if vals else None, "max": max(vals) if vals else None,
        "logits": (logits[0] / logits[1]) ** 0.5, "images": len(x),
    }


# --------------------------------------------------------------------------- rows


def prune_row(b: RecoveryBench, method: str, target: float, n: int, with_recon: bool):
    """Prune, measure as returned and after BN re-estimation; returns (model without fine-tune, row)."""
    pruned, record, seconds = b.prune(METHODS[method](target, n))
    row = {
        "method": method, "target": target, "calibration_images": n, "own_recovery": OWN_RECOVERY[method],
        "macs_kept": kept(record, "macs"), "params_kept": kept(record, "params"), "prune_seconds": seconds,
        "prune_seconds_parts": record["seconds"], "verified": record["verified"],
        "accuracy_returned": b.accuracy(pruned),
    }
    bn = copy.deepcopy(pruned)
    t0 = time.perf_counter()
    seen = b.recalibrate(bn, source=b.calibration(n))
    row["bn_seconds"] = time.perf_counter() - t0
    row["bn_images"] = seen
    row["accuracy_bn"] = b.accuracy(bn)
    # the model each method would be used as without fine-tuning: its own recovery, or BN re-estimation if none
    chosen = bn if OWN_RECOVERY[method] == "none" else pruned
    row["headline"] = "bn" if chosen is bn else "returned"
    if with_recon:
        row["reconstruction"] = reconstruction(b.model, chosen.eval(), b.held_out)
    if record.get("analysis", {}).get("unresolved"):  # groups wider than the calibration set: kept whole
        row["analysis_unresolved"] = record["analysis"]["unresolved"]
    if method == "cp":
        row["cp_layers"] = record.get("cp", {}).get("layers")
    return chosen, row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["resnet56", "vgg16_bn"])
    p.add_argument("--parts", default="main,calibration,finetune")
    p.add_argument("--methods", default=None, help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--quick", action="store_true", help="one target, no fine-tune, separate _quick file (smoke check)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = set(args.parts.split(","))
    methods = [m for m in args.methods.split(",") if m] if args.methods else [
        m for m in METHODS if not (m == "cp-nocorr" and args.model != "resnet56")]  # VGG has no residual branches
    b = RecoveryBench(args.model)
    header = {
        "model": args.model, "model_note": "width 0.5, as shipped" if args.model == "vgg16_bn" else "full width",
        "data": "fashion_mnist", "test_subset": TEST_SUBSET, "calibration": CALIBRATION, "calibration_sizes": [100, 500, 2000],
        "held_out_images": HELD_OUT, "finetune": FT, "threads": 1,
        "command": f"python -m bench.recovery {args.model}" + (" --quick" if args.quick else ""), "versions": versions(),
    }
    res = Results(RESULTS / f"recovery_{args.model}{'_quick' if args.quick else ''}.json", header, key=row_key)
    if "dense_accuracy" not in res.doc:
        res.merge({"dense_accuracy": b.accuracy(b.model)})
    res.save()

    def run(kind, method, target, n, finetune_too):
        key = (kind, method, target, n)
        prev = res.row(key)
        if prev is not None and not (finetune_too and "error" not in prev and "accuracy_finetuned" not in prev):
            return
        print(f"[{kind}] {method} target={target} calibration={n}", flush=True)
        try:
            model, row = prune_row(b, method, target, n, with_recon=(kind == "main"))
        except ChanpruneError as exc:
            row, model = {"method": method, "target": target, "calibration_images": n, "error": str(exc)}, None
        row["kind"] = kind
        res.add(row)
        if finetune_too and model is not None:
            tuned, row["finetune_seconds"] = b.finetuned(model, {"epochs": FT["epochs"], "lr": FT["lr"],
                                                                 "batch_size": FT["batch_size"],
                                                                 "train_images": FT["images"]}, device="auto")
            row["finetune_onednn"] = torch.backends.mkldnn.enabled
            row["accuracy_finetuned"] = b.accuracy(tuned)
            res.add(row)

    targets = TARGETS[:1] if args.quick else TARGETS
    if "main" in parts:
        for target in targets:
            for method in methods:
                run("main", method, target, CALIBRATION,
                    finetune_too=("finetune" in parts and not args.quick and method not in EXTRA))
    if "calibration" in parts:
        for n in (SIZES[:1] if args.quick else SIZES):
            for method in methods:
                if method not in EXTRA:
                    run("calibration", method, 0.5, n, finetune_too=False)
    print(json.dumps({"model": args.model, "dense_accuracy": res.doc["dense_accuracy"], "rows": len(res.rows())}))
    return 0


def row_key(row: dict) -> tuple:
    """A row is one (part, method, MAC target, calibration size)."""
    return row["kind"], row["method"], row["target"], row["calibration_images"]


if __name__ == "__main__":
    raise SystemExit(main())
