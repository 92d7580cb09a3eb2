"""The scoreboard: every chanprune method against Torch-Pruning, on the same rows.

    python -m bench.scoreboard --quick          # smoke check, a few minutes
    python -m bench.scoreboard --supervise      # the original full run (resumable; restarts after an abort)
    python -m bench.make_readme results         # README Results + PNG plots (bench/scoreboard_report.py)

Each process runs on one thread; start two (they share a model's file row by row) to use two cores.

For each model × data × MAC target × method: load the checkpoint, prune it to the target, then record accuracy
before and after BatchNorm re-estimation (no fine-tune), accuracy after a fine-tune for several seeds
(mean ± std), MACs, params, interleaved CPU latency speed-up at batch 1 and 32, the wall time of the pruning
step, the calibration images used, the seed and the versions. One JSON per model; every finished row is written
at once (atomically) and rows already present are skipped, so a killed run resumes where it stopped.

The recovery protocol (``--protocol``), the same for every method, on any zoo folder (``--zoo zoo``):

  (a) no fine-tune: every method at every target, BatchNorm re-estimated on the calibration images (the same
      images every method prunes with);
  (b) one full epoch over the training split (``PROTOCOL_RECIPE['finetune']``: lr 0.01, cosine) for the two
      best chanprune rows and the two best Torch-Pruning rows of each model × target, chosen from the (a) rows;
  (c) the budget-matched longer fine-tune (5 epochs, otherwise (b)'s recipe) for the best row of each family,
      chosen from the (b) rows.
Fine-tunes run with 3 seeds and on the GPU when there is one (``--finetune-device auto``). Ties are ties:
within the larger seed std after a fine-tune, within one binomial standard error without (bench.harness).
Each protocol writes to its own folder, bench/results/<zoo>_protocol_<p>/, so rows of different protocols,
zoos and recipes never share a file:

    python -m bench.scoreboard --zoo zoo --protocol a
    python -m bench.scoreboard --zoo zoo --protocol b --finetune-device auto
    python -m bench.scoreboard --zoo zoo --protocol c --finetune-device auto
    python -m bench.make_readme protocol        # (a) and (b), best against best, into the README's protocol section

Peers run through Torch-Pruning's own public API as its users call it: ``tp.pruner.BasePruner`` with
``tp.importance.*`` (Taylor gradients and Hessian per-sample gradients accumulated on the calibration images the
way Torch-Pruning's docstrings and benchmark do), the classifier in ``ignored_layers``, and Torch-Pruning's
``pruning_ratio`` found by bisection so that the MACs land within 1 % of the target. chanprune's methods are
discovered from ``chanprune.api.METHODS`` (a newly registered method joins without edits), except the
re-implementations of criteria Torch-Pruning already has (``OURS_SKIP``), which are compared through
Torch-Pruning's own implementation instead.

The same for everyone: the checkpoint, the calibration images (a stratified seed-0 subset of the training
split), BatchNorm re-estimation on exactly those images, the fine-tune recipe, the test subset, and the latency
protocol. Nothing here is tuned per method.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.harness import (CHECKPOINTS, RESULTS, ROOT, Bench, Results, claim, compare, compare_no_ft, device_name,
                           jsonable, mean_std, merge, one_line, versions)

SCHEMA = 1

# ------------------------------------------------------------------------------------------ settings

# (model, data, checkpoint folder), in the order of the full run: the most informative rows first.
MODELS = [
    ("resnet20", "fashion_mnist", "resnet20_fashion_mnist"),
    ("resnet56", "fashion_mnist", "resnet56_fashion_mnist"),
    ("vgg16_bn", "fashion_mnist", "vgg16_bn_fashion_mnist"),
    ("resnet20", "mnist", "resnet20_mnist"),
    ("mobilenetv2", "fashion_mnist", "mobilenetv2_fashion_mnist"),
]
TARGETS = (0.5, 0.33, 0.25)

RECIPE = {
    "calibration_images": 512,          # stratified subset of the training split, seed 0, for every method
    "calibration_seed": 0,
    "bn_recalibration": "all calibration images, batches of 64, exact average (chanprune.engine.recalibrate_bn)",
    "test_images": 2000,                # stratified subset of the test split, seed 0 (all of it if smaller)
    "finetune": {"epochs": 1, "train_images": 1000, "lr": 0.01, "schedule": "cosine", "batch_size": 64,
                 "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": True,
                 "note": "chanprune.engine.finetune on the stratified seed-0 training subset of train_images images "
                         "(subsets are nested, so it contains the calibration images when it is larger); the seed "
                         "sets the batch order and augmentation"},
    "seeds": [0, 1, 2],
    "latency": {"batch_sizes": [1, 32], "repeats": 15, "warmup": 2, "threads": 1,
                "note": "chanprune.measurement.latency: dense and pruned timed interleaved, order rotated each round, "
                        "medians; speed-up = dense median / pruned median"},
    "tolerance": 0.01,                  # MACs within 1 % (relative) of the target ...
    "accept_tolerance": 0.03,           # ... or, where channel counts are too coarse for that, the closest within 3 %
                                        # (flagged within_tolerance=false, † in the README); beyond: a failed row
    "round_to_accept_tolerance": 0.25,  # round_to study: rounded counts are coarse; the closest is kept and its
                                        # speed-up is compared with its own MAC reduction
    "threads": 1,
}
QUICK = {
    "models": ["resnet20_fashion_mnist"], "targets": [0.5],
    "methods": ["tp.l1", "tp.taylor", "ours.hierarchical", "ours.hierarchical+compensate"],
    "round_to": {"methods": ["tp.l1", "ours.hierarchical"], "values": [None, 8]},
    "overrides": {"test_images": 500, "seeds": [0], "calibration_images": 256,
                  "finetune": {"train_images": 256}, "latency": {"repeats": 5}},
}
ROUND_TO = {"values": [None, 4, 8, 16], "methods": ["tp.l1", "ours.hierarchical", "ours.hierarchical+exceed"],
            "target": 0.5}  # +exceed runs only where plain hierarchical refused the rounded target
# Run order when compute is short (this 2-core machine), most informative rows first:
#   phase 1: every method at every target on FULL_MODEL; on the other models, the core methods at 50 % of the MACs
#            and the round_to study, model by model in MODELS order;
#   phase 2: the core methods at the other targets on the other models;
#   phase 3: the EXTENDED methods on the other models.
# Core = every method not in EXTENDED (so newly registered methods are core). Phases 2-3 exceed the budget and run
# when there is time; rows not yet measured are listed under the README tables.
FULL_MODEL = "resnet20_fashion_mnist"
EXTENDED = ["tp.l2", "tp.l1_global", "tp.fpgm", "tp.bn_scale", "tp.hessian", "ours.hrank", "ours.l1+compensate"]

# chanprune re-implementations of criteria that Torch-Pruning ships itself: compared through Torch-Pruning's code.
# cacp returns a family of models from one search and ucp trains (MSEBs, then retraining): both have their own
# benchmarks (bench/cacp.py, bench/ucp.py) instead of a row in this one-model, no-training table.
OURS_SKIP = {"l1", "l2", "fpgm", "bn_scale", "taylor", "random", "cacp", "ucp"}
# Extra chanprune variants beyond each registered method's default config: (id, registered method, overrides).
OURS_VARIANTS = [
    ("ours.hierarchical+compensate", "hierarchical", {"recover": "compensate"}),
    ("ours.l1+compensate", "l1", {"recover": "compensate"}),
]
# Run only where the plain method refused the target: hierarchical past the analysis' maximum.
OURS_FALLBACKS = [("ours.hierarchical+exceed", "hierarchical", {"allow_exceed": True}, "ours.hierarchical"),
                  ("ours.hierarchical+compensate+exceed", "hierarchical", {"recover": "compensate", "allow_exceed": True},
                   "ours.hierarchical+compensate")]
# Order of the method loop (most informative first); methods not listed follow in registry order.
PRIORITY = ["ours.hierarchical", "tp.l1", "tp.l2_global", "tp.taylor", "ours.hierarchical+compensate", "ours.cap",
            "ours.cp", "tp.l2_isomorphic", "tp.fpgm", "tp.bn_scale", "tp.hessian", "tp.l1_global", "tp.l2",
            "ours.hrank", "ours.l1+compensate", "ours.hierarchical+exceed", "ours.hierarchical+compensate+exceed"]

# The recovery protocol (--protocol): one recipe for every method, stated once. Larger calibration and test sets
# than the original run: BatchNorm statistics from 2,000 images, accuracies on the whole test split (so one
# binomial standard error, the tie margin without a fine-tune, is about 0.25 points at 93 %).
PROTOCOL_RECIPE = {
    "calibration_images": 2000,
    "calibration_seed": 0,
    "bn_recalibration": "all calibration images, batches of 64, exact average (chanprune.engine.recalibrate_bn)",
    "test_images": 10000,
    "finetune": {"epochs": 1, "train_images": None, "lr": 0.01, "schedule": "cosine", "batch_size": 128,
                 "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": True,
                 "note": "chanprune.engine.finetune over the whole training split (train_images None), starting from "
                         "the BN-re-estimated pruned model; the seed sets the batch order and augmentation"},
    "seeds": [0, 1, 2],
    "latency": RECIPE["latency"],
    "tolerance": RECIPE["tolerance"],
    "accept_tolerance": RECIPE["accept_tolerance"],
    "ties": "fine-tuned: means within the larger seed std; no fine-tune: within one binomial standard error of "
            "the difference on the test images",
    "threads": 1,
}
# protocol -> what it does: the fine-tune over PROTOCOL_RECIPE's (None: none) and which rows it takes from which
# protocol (source protocol, rows per family per model × target, ranked by no-fine-tune or fine-tuned accuracy).
PROTOCOLS = {
    "a": {"text": "no fine-tune; BatchNorm re-estimated on the calibration images", "finetune": None,
          "select": None},
    "b": {"text": "one full epoch over the training split, lr 0.01 cosine, 3 seeds, for the two best chanprune "
                  "and the two best Torch-Pruning rows of (a)", "finetune": {"epochs": 1},
          "select": ("a", 2, "no_ft")},
    "c": {"text": "five epochs over the training split (otherwise (b)'s recipe), 3 seeds, for the best chanprune "
                  "and the best Torch-Pruning row of (b)", "finetune": {"epochs": 5},
          "select": ("b", 1, "ft")},
}


# ------------------------------------------------------------------------------------------ methods

@dataclasses.dataclass
class Method:
    id: str
    family: str                 # "torch-pruning" or "chanprune"
    describe: dict              # JSON-able description of the call
    run: Callable[["Context", float, int | None], "Pruned"]
    fallback_for: str | None = None


@dataclasses.dataclass
class Pruned:
    model: nn.Module
    prune_seconds: float        # the pruning step itself (TP: gradients + pruner + step at the found ratio)
    search_seconds: float       # all of it, including the search for the MAC target
    info: dict


def _tp():
    import torch_pruning as tp
    return tp


# id -> (tp.importance class, its arguments, BasePruner keywords, gradients it needs)
TP_METHODS = {
    "tp.l1": ("MagnitudeImportance", {"p": 1}, {}, "none"),
    "tp.l2": ("MagnitudeImportance", {"p": 2}, {}, "none"),
    "tp.l1_global": ("MagnitudeImportance", {"p": 1}, {"global_pruning": True}, "none"),
    "tp.l2_global": ("MagnitudeImportance", {"p": 2}, {"global_pruning": True}, "none"),
    "tp.taylor": ("TaylorImportance", {}, {}, "taylor"),
    "tp.hessian": ("HessianImportance", {}, {}, "hessian"),
    "tp.fpgm": ("FPGMImportance", {"p": 2}, {}, "none"),
    "tp.bn_scale": ("BNScaleImportance", {}, {}, "none"),
    "tp.l2_isomorphic": ("MagnitudeImportance", {"p": 2}, {"global_pruning": True, "isomorphic": True}, "none"),
}


def _classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """What Torch-Pruning's benchmark puts in ignored_layers: the layers producing the class logits."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            out.append(m)
        elif isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes:
            out.append(m)
    return out


def _tp_gradients(model: nn.Module, imp, mode: str, batches) -> None:
    """Gradients the importance needs, computed as Torch-Pruning documents it (model in eval mode)."""
    if mode == "taylor":
        model.zero_grad()
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    elif mode == "hessian":
        # Torch-Pruning's documented loop (per-sample loss, zero_grad, backward, accumulate_grad). In eval mode the
        # samples of a batch are independent, so feeding them one at a time gives the same per-sample gradients
        # without back-propagating through the whole batch once per sample.
        imp.zero_grad()
        for xb, yb in batches:
            for x, y in zip(xb.split(1), yb.split(1)):
                loss = F.cross_entropy(model(x), y, reduction="none")
                for item in loss:
                    model.zero_grad()
                    item.backward(retain_graph=True)
                    imp.accumulate_grad(model)


def tp_method(mid: str) -> Method:
    cls_name, imp_args, kwargs, grads = TP_METHODS[mid]

    def factory():
        return getattr(_tp().importance, cls_name)(**imp_args)

    def run(ctx: "Context", target: float, round_to: int | None) -> Pruned:
        tp = _tp()
        t_all = time.perf_counter()
        base = copy.deepcopy(ctx.dense).eval()
        imp = factory()
        t0 = time.perf_counter()
        _tp_gradients(base, imp, grads, ctx.calib_batches)
        grad_seconds = time.perf_counter() - t0
        dense_macs = ctx.dense_macs
        trials: list[tuple[float, float]] = []

        def attempt(ratio: float):
            # deep-copy model and importance together, so accumulated per-parameter statistics follow the copy
            model, imp_c = copy.deepcopy((base, imp))
            for p_c, p_b in zip(model.parameters(), base.parameters()):  # nn.Parameter's deepcopy drops .grad
                p_c.grad = None if p_b.grad is None else p_b.grad.clone()
            t = time.perf_counter()
            pruner = tp.pruner.BasePruner(model, ctx.example, importance=imp_c, pruning_ratio=ratio,
                                          ignored_layers=_classifier_layers(model, ctx.num_classes),
                                          round_to=round_to, **kwargs)
            pruner.step()
            seconds = time.perf_counter() - t
            model.zero_grad(set_to_none=True)
            macs, _ = ctx.count(model)
            return model, macs / dense_macs, seconds

        def safe(ratio: float):
            try:
                out = attempt(ratio)
            except Exception as exc:  # an over-pruned trial that Torch-Pruning cannot build counts as "too far"
                trials.append((ratio, float("nan")))
                return None, 0.0, 0.0, f"{type(exc).__name__}: {exc}"
            trials.append((ratio, out[1]))
            return (*out, None)

        lo, hi = 0.0, 0.99
        best = None  # (|rel err|, ratio, model, macs_kept, seconds)
        last_error = None
        for _ in range(24):
            mid = (lo + hi) / 2
            model, r, sec, err = safe(mid)
            if err is not None:
                last_error = err
                hi = mid
                continue
            rel = abs(r - target) / target
            if best is None or rel < best[0]:
                best = (rel, mid, model, r, sec)
            if rel <= ctx.recipe["tolerance"]:
                break
            if r > target:
                lo = mid
            else:
                hi = mid
        if best is None:
            raise RuntimeError(f"Torch-Pruning could not prune at any ratio tried ({last_error})")
        rel, ratio, model, r, sec = best
        accept = ctx.recipe["accept_tolerance" if round_to is None else "round_to_accept_tolerance"]
        if rel > accept:
            raise RuntimeError(f"no Torch-Pruning pruning_ratio lands within {accept:.0%} of "
                               f"{target:.0%} of the MACs (closest: ratio {ratio:.4f} keeps {r:.2%})")
        model.eval()
        info = {"pruning_ratio": ratio, "trials": len(trials), "gradient_seconds": grad_seconds,
                "pruner_seconds": sec}
        if grads == "hessian":  # how many samples Torch-Pruning's accumulate_grad kept per parameter (diagnostic)
            info["hessian_samples_accumulated"] = max(getattr(imp, "_counter", {}).values(), default=None)
            info["hessian_samples_fed"] = sum(len(y) for _, y in ctx.calib_batches)
        return Pruned(model, grad_seconds + sec, time.perf_counter() - t_all, info)

    describe = {"api": "torch_pruning.pruner.BasePruner", "importance": f"torch_pruning.importance.{cls_name}",
                "importance_args": imp_args, "gradients": grads, "ignored_layers": "classifier (out_features == classes)",
                "pruning_ratio": "bisected to the MAC target", **kwargs}
    return Method(mid, "torch-pruning", describe, run)


def ours_method(mid: str, name: str, overrides: dict, fallback_for: str | None = None) -> Method:
    from chanprune.api import METHODS

    cls = METHODS[name][0]

    def make_config(target: float, round_to: int | None, calib: int):
        return cls(target_macs=target, round_to=round_to, calibration=calib, seed=0, **overrides)

    def run(ctx: "Context", target: float, round_to: int | None) -> Pruned:
        import chanprune

        config = make_config(target, round_to, ctx.recipe["calibration_images"])
        t0 = time.perf_counter()
        pruned = chanprune.prune(ctx.dense, config, data=ctx.calib_pair, example_inputs=ctx.example)
        seconds = time.perf_counter() - t0
        rec = pruned.chanprune_history[-1]
        info = {"config": jsonable(rec["config"]), "seconds": rec["seconds"], "verified": rec["verified"]}
        if "warning" in rec:
            info["warning"] = rec["warning"]
        if "analysis" in rec:
            info["analysis"] = {k: v for k, v in rec["analysis"].items()
                                if k in ("max_compression_macs", "samples", "seconds")}
        comp = rec.get("compensation")
        if isinstance(comp, dict) and isinstance(comp.get("consumers"), dict):
            rel = [c.get("relative_loss") for c in comp["consumers"].values() if isinstance(c, dict)]
            rel = [x for x in rel if isinstance(x, (int, float))]
            info["compensation"] = {"consumers": len(comp["consumers"]), "skipped": len(comp.get("skipped", [])),
                                    "mean_relative_loss": float(np.mean(rel)) if rel else None}
        return Pruned(pruned.eval(), seconds, seconds, info)

    describe = {"api": "chanprune.prune", "config": cls.__name__, "method": name, **overrides}
    return Method(mid, "chanprune", describe, run, fallback_for)


def all_methods() -> list[Method]:
    from chanprune.api import METHODS

    out = [tp_method(mid) for mid in TP_METHODS]
    for name in METHODS:
        if name not in OURS_SKIP:
            out.append(ours_method(f"ours.{name}", name, {}))
    for mid, name, over in OURS_VARIANTS:
        if name in METHODS:
            out.append(ours_method(mid, name, over))
    for mid, name, over, parent in OURS_FALLBACKS:
        if name in METHODS:
            out.append(ours_method(mid, name, over, fallback_for=parent))
    rank = {m: i for i, m in enumerate(PRIORITY)}
    return sorted(out, key=lambda m: rank.get(m.id, len(rank)))


# ------------------------------------------------------------------------------------------ context

class Context(Bench):
    """One checkpoint with the recipe every row shares; fine-tunes run on ``finetune_device``, everything else
    (pruning, accuracy, latency) on the CPU."""

    def __init__(self, model_name: str, data_name: str, folder: str, recipe: dict, finetune_device: str = "cpu",
                 zoo: Path = CHECKPOINTS):
        super().__init__(folder, data_name, zoo=zoo, test_images=recipe["test_images"],
                         calibration_images=recipe["calibration_images"], calibration_seed=recipe["calibration_seed"])
        self.model_name, self.recipe, self.finetune_device = model_name, recipe, finetune_device

    def finetuned_accuracy(self, model: nn.Module, seed: int) -> tuple[float, float]:
        tuned, seconds = self.finetuned(model, self.recipe["finetune"], seed=seed, device=self.finetune_device)
        return self.accuracy(tuned), seconds

    def latency(self, model: nn.Module) -> dict:
        from chanprune.measurement import latency
        lat = self.recipe["latency"]
        res = latency({"dense": self.dense, "pruned": model}, tuple(self.example.shape[1:]),
                      batch_sizes=lat["batch_sizes"], repeats=lat["repeats"], warmup=lat["warmup"],
                      threads=lat["threads"])
        return {f"b{bs}": {"dense_ms": res["dense"][bs]["median_ms"], "pruned_ms": res["pruned"][bs]["median_ms"],
                           "speedup": res["speedup"]["pruned"][bs]} for bs in lat["batch_sizes"]}


def row_key(target: float, method: str, round_to: int | None) -> str:
    return f"{target:.2f}|{method}|round_to={round_to}"


# ------------------------------------------------------------------------------------------ one row

def run_row(ctx: Context, method: Method, target: float, round_to: int | None, finetune: bool,
            mkldnn_finetune: bool = True, measure_latency: bool = True) -> dict:
    row: dict[str, Any] = {
        "model": ctx.model_name, "data": ctx.data_name, "target_macs": target, "method": method.id,
        "family": method.family, "call": method.describe, "round_to": round_to,
        "calibration_images": ctx.recipe["calibration_images"], "seed": 0, "test_images": ctx.test_n,
    }
    t_row = time.perf_counter()
    try:
        pruned = method.run(ctx, target, round_to)
    except Exception as exc:  # a refused or failed prune is a row, not a crash
        row.update(status="failed", reason=one_line(exc), row_seconds=time.perf_counter() - t_row)
        return row
    model = pruned.model
    macs, params = ctx.count(model)
    row.update(status="ok", prune_seconds=pruned.prune_seconds, search_seconds=pruned.search_seconds,
               info=jsonable(pruned.info), macs=macs, params=params, macs_kept=macs / ctx.dense_macs,
               params_kept=params / ctx.dense_params,
               within_tolerance=abs(macs / ctx.dense_macs - target) <= ctx.recipe["tolerance"] * target)
    row["accuracy_before_bn"] = ctx.accuracy(model)
    row["bn_images"] = ctx.recalibrate(model)
    row["accuracy_no_ft"] = ctx.accuracy(model)
    if measure_latency:
        row["latency"] = ctx.latency(model)
    if finetune:
        accs, secs = [], []
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = mkldnn_finetune
        try:
            for seed in ctx.recipe["seeds"]:
                a, s = ctx.finetuned_accuracy(model, seed)
                accs.append(a)
                secs.append(s)
        finally:
            torch.backends.mkldnn.enabled = before
        row["finetune_mkldnn"] = mkldnn_finetune
        row["finetune_device"] = device_name(getattr(ctx, "finetune_device", "cpu"))
        row["accuracy_ft"] = {"seeds": list(ctx.recipe["seeds"]), **mean_std(accs)}
        row["finetune_seconds"] = secs
    row["row_seconds"] = time.perf_counter() - t_row
    return row


# ------------------------------------------------------------------------------------------ the recovery protocol

def select_rows(rows: list[dict], top: int, by: str, test_images: int | None = None) -> list[dict]:
    """Per MAC target, the ``top`` best rows of each family (chanprune, Torch-Pruning) among the rows that pruned
    (round_to studies left out), ranked by no-fine-tune accuracy (``by='no_ft'``) or mean fine-tuned accuracy
    (``by='ft'``).

    Returns one entry per target and family: the chosen method ids, best first, and the rows left out that tie
    with the last chosen one (the tie rule of :mod:`bench.harness`), so a report can say the cut fell in a tie.
    """
    def score(r: dict) -> float | None:
        if by == "no_ft":
            return r.get("accuracy_no_ft")
        return (r.get("accuracy_ft") or {}).get("mean")

    def ties(a: dict, b: dict) -> bool:
        if by == "no_ft":
            return compare_no_ft(score(a), score(b), test_images or a.get("test_images", 0)) == "tie"
        fa, fb = a["accuracy_ft"], b["accuracy_ft"]
        return compare((fa["mean"], fa["std"]), (fb["mean"], fb["std"])) == "tie"

    ok = [r for r in rows if r.get("status") == "ok" and r.get("round_to") is None and score(r) is not None]
    out = []
    for target in sorted({r["target_macs"] for r in ok}, reverse=True):
        for family in ("chanprune", "torch-pruning"):
            ranked = sorted((r for r in ok if r["family"] == family and abs(r["target_macs"] - target) < 1e-9),
                            key=lambda r: (-score(r), r["method"]))
            chosen, rest = ranked[:top], ranked[top:]
            if not chosen:
                continue
            out.append({"target_macs": target, "family": family, "by": by,
                        "chosen": [r["method"] for r in chosen], "scores": [score(r) for r in chosen],
                        "tied_with_last_chosen": [r["method"] for r in rest if ties(r, chosen[-1])]})
    return out


def protocol_dir(zoo: Path, protocol: str) -> Path:
    """Where one protocol's rows on one zoo go: a folder of their own, never the files of another protocol."""
    return RESULTS / f"{Path(zoo).resolve().name}_protocol_{protocol}"


def protocol_plan(protocol: str, methods: list[Method], targets: list[float], source: Path | None,
                  test_images: int) -> tuple[list[tuple], list[dict], dict]:
    """The rows one protocol runs on one model: (jobs, selection, rows of the source protocol by key).

    (a) runs every method at every target without a fine-tune; (b) and (c) fine-tune the rows
    :func:`select_rows` picks from the protocol they build on (``PROTOCOLS[p]['select']``)."""
    spec = PROTOCOLS[protocol]
    if spec["select"] is None:
        return [(t, m, None, False) for t in targets for m in methods], [], {}
    prev, top, by = spec["select"]
    if source is None or not source.exists():
        raise FileNotFoundError(f"protocol ({protocol}) picks its rows from protocol ({prev})'s results, and "
                                f"{source} does not exist; run --protocol {prev} first or pass --select-from.")
    rows = [r for r in json.loads(source.read_text()).get("rows", [])
            if any(abs(r["target_macs"] - t) < 1e-9 for t in targets)]
    selection = select_rows(rows, top, by, test_images)
    by_id = {m.id: m for m in methods}
    jobs = [(s["target_macs"], by_id[mid], None, True) for s in selection for mid in s["chosen"] if mid in by_id]
    return jobs, selection, {r["key"]: r for r in rows}


def protocol_recipe(protocol: str, quick: bool) -> dict:
    recipe = copy.deepcopy(PROTOCOL_RECIPE)
    recipe["finetune"] = {**recipe["finetune"], **(PROTOCOLS[protocol]["finetune"] or {})}
    recipe["protocol"] = {"name": protocol, **{k: v for k, v in PROTOCOLS[protocol].items() if k != "select"},
                          "select": dict(zip(("from", "top_per_family", "by"), PROTOCOLS[protocol]["select"]))
                          if PROTOCOLS[protocol]["select"] else None}
    if quick:
        recipe = merge(recipe, QUICK["overrides"])
    if PROTOCOLS[protocol]["finetune"] is None:
        del recipe["finetune"], recipe["seeds"]
    return recipe


# ------------------------------------------------------------------------------------------ driver

def zoo_models(zoo: Path) -> list[tuple[str, str, str]]:
    """MODELS, then any other checkpoint folder in ``zoo`` whose record.json names its model and data."""
    out = list(MODELS)
    for rec in sorted(Path(zoo).glob("*/record.json")):
        r = json.loads(rec.read_text())
        if rec.parent.name not in {m[2] for m in out} and r.get("model") and r.get("data"):
            out.append((r["model"], r["data"], rec.parent.name))
    return out


def results_path(folder: str, quick: bool) -> Path:
    return RESULTS / ("scoreboard_quick.json" if quick else f"scoreboard_{folder}.json")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated checkpoint folders (default: all, in the run order)")
    p.add_argument("--methods", help="comma-separated method ids, e.g. tp.l1,ours.hierarchical (default: all)")
    p.add_argument("--targets", help="comma-separated kept-MAC fractions (default: 0.5,0.33,0.25)")
    p.add_argument("--seeds", help="comma-separated fine-tune seeds (default: 0,1,2)")
    p.add_argument("--quick", action="store_true", help="smoke check: one small model, one target, few methods")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="the recovery protocol (module docstring): rows go to a folder of their own per zoo and "
                        "protocol, bench/results/<zoo>_protocol_<p>/ (default: the original scoreboard run)")
    p.add_argument("--zoo", default=str(CHECKPOINTS),
                   help="folder holding <model>_<data>/ checkpoints with record.json (default: checkpoints)")
    p.add_argument("--out", help="results folder for --protocol (default: bench/results/<zoo>_protocol_<p>)")
    p.add_argument("--select-from", help="results folder of the protocol that (b)/(c) pick rows from "
                                         "(default: bench/results/<zoo>_protocol_<a or b>)")
    p.add_argument("--calibration-images", type=int,
                   help="calibration images for every method and the BatchNorm re-estimation (default: the recipe's, "
                        "512 for the original run, 2,000 for --protocol); recorded in each file's recipe")
    p.add_argument("--no-round-to", action="store_true", help="skip the round_to study")
    p.add_argument("--only-round-to", action="store_true", help="run only the round_to study")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    p.add_argument("--dry-run", action="store_true", help="print the planned rows (and which are done) and exit")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="a row whose process died this many times is recorded as failed (default 3; every attempt "
                        "after the first fine-tunes with oneDNN disabled)")
    p.add_argument("--finetune-device", default="auto",
                   help="where the fine-tunes run: auto (default: the GPU when there is one), cpu or cuda[:N]; "
                        "pruning, accuracy and latency always run on the CPU, and each row records its fine-tune "
                        "device")
    p.add_argument("--supervise", action="store_true",
                   help="run the benchmark in a child process and restart it after an abort (e.g. a native crash)")
    return p.parse_args(argv)


def supervise(argv: list[str]) -> int:
    import signal
    child = [sys.executable, "-m", "bench.scoreboard"] + [a for a in argv if a != "--supervise"]
    proc = None
    stopping = False

    def forward(signum, frame):  # stop = stop the child cleanly (it gives its row's attempt back), then exit
        nonlocal stopping
        stopping = True
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for attempt in range(1, 21):
        if stopping:
            return 143
        proc = subprocess.Popen(child, cwd=ROOT)
        rc = proc.wait()
        if stopping:
            return 143
        if rc >= 0 and rc not in (134, 139):
            return rc
        print(f"[scoreboard] child died (rc {rc}); restarting ({attempt})", flush=True)
    return 1


class Stopped(BaseException):
    """Raised by SIGTERM/SIGINT in a worker (BaseException, so run_row's failure handling does not swallow it)."""


def _stop(signum, frame):
    raise Stopped()


def _print_row(row: dict) -> None:
    if row["status"] == "ok":
        ft_s = f", FT {row['accuracy_ft']['mean']:.2f}±{row['accuracy_ft']['std']:.2f}" if "accuracy_ft" in row else ""
        lat = row.get("latency")
        lat_s = f", speed-up b1 {lat['b1']['speedup']:.2f} b32 {lat['b32']['speedup']:.2f}" if lat else ""
        print(f"    MACs {row['macs_kept']:.3f}, no-FT {row['accuracy_no_ft']:.2f}{ft_s}{lat_s}, "
              f"prune {row['prune_seconds']:.1f}s, row {row['row_seconds']:.0f}s", flush=True)
    else:
        print(f"    failed: {row['reason']}", flush=True)


def run_jobs(ctx: Context, res: Results, jobs: list[tuple], args: argparse.Namespace,
             source_rows: dict | None = None) -> int:
    """Run the rows not yet in ``res``, each claimed so that parallel processes share the work; returns how many
    rows this process computed. ``source_rows``: the rows a fine-tune protocol picked, whose latency it reuses
    (the same deterministic prune gives the same architecture; the row records whether the MACs matched)."""
    path, computed, held = res.path, 0, None
    try:
        for target, method, round_to, ft in jobs:
            key = row_key(target, method.id, round_to)
            if held is not None:
                held.close()
            held = claim(path, key)
            if held is None:
                print(f"[scoreboard] {ctx.folder} {key}: another process is running this row, skipped", flush=True)
                continue
            res.refresh()
            prev = res.row(key)
            if prev is not None:
                if not (prev["status"] == "failed" and prev.get("reason", "").startswith("the process died")
                        and not prev.get("mkldnn_off_tried")):
                    continue
                # a row whose process died with oneDNN on gets one more attempt, with oneDNN off
                res.drop(key)
                res.set_attempts(key, 1)
            src = (source_rows or {}).get(key)  # a row a fine-tune protocol picked: run it whatever its kind
            if method.fallback_for is not None and src is None:
                parent_key = row_key(target, method.fallback_for, round_to)
                if res.row(parent_key) is None:  # another process may be running the parent: wait for its verdict
                    claim(path, parent_key, wait=True).close()
                    res.refresh()
                parent = res.row(parent_key)
                if parent is None or parent["status"] == "ok":
                    continue
            n = res.attempt(key)
            if n > args.max_attempts:
                res.add({"key": key, "model": ctx.model_name, "data": ctx.data_name, "target_macs": target,
                         "method": method.id, "family": method.family, "call": method.describe, "round_to": round_to,
                         "status": "failed",
                         "reason": f"the process died {n - 1} times on this row (native abort, e.g. the oneDNN heap "
                                   "corruption seen in conv backward), also with oneDNN disabled; skipped",
                         "mkldnn_off_tried": n > 2})
                continue
            # After a native abort on this row, fine-tune it with oneDNN disabled (the heap corruption seen in
            # oneDNN's conv backward does not occur without it); recorded in the row.
            print(f"[scoreboard] {ctx.folder} target {target:.0%} {method.id} round_to={round_to} ...", flush=True)
            try:
                row = run_row(ctx, method, target, round_to, finetune=ft, mkldnn_finetune=n < 2,
                              measure_latency=src is None)
            except Stopped:  # a deliberate stop is not an abort: give the attempt back, so no oneDNN-off retry
                res.set_attempts(key, n - 1)
                print(f"[scoreboard] stopped during {key}", flush=True)
                raise
            if src is not None and row["status"] == "ok":
                row["latency"] = src.get("latency")
                row["selected_from"] = {"accuracy_no_ft": src.get("accuracy_no_ft"), "macs": src.get("macs"),
                                        "accuracy_ft": src.get("accuracy_ft"), "same_macs": src.get("macs") == row["macs"]}
            row["key"] = key
            row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            res.add(row)
            _print_row(row)
            computed += 1
    finally:
        if held is not None:
            held.close()
    return computed


def _legacy_plan(args, models, targets, methods, wanted) -> list[tuple]:
    """(model, targets, methods, with the round_to study) in the original run's order (see PRIORITY, EXTENDED)."""
    if wanted is not None or args.quick or args.models:
        return [(m, targets, methods, True) for m in models]
    core = [m for m in methods if m.id not in EXTENDED]
    rest = [m for m in methods if m.id in EXTENDED]
    others = [m for m in models if m[2] != FULL_MODEL]
    first = [t for t in targets if abs(t - ROUND_TO["target"]) < 1e-9]
    later = [t for t in targets if t not in first]
    plan = [(m, targets, methods, True) if m[2] == FULL_MODEL else (m, first, core, True) for m in models]
    plan += [(m, later, core, False) for m in others]
    plan += [(m, targets, rest, False) for m in others]
    return plan


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.supervise:
        return supervise(argv)
    from chanprune.engine.evaluate import resolve_device
    from chanprune.errors import ChanpruneError
    try:
        finetune_device = str(resolve_device(args.finetune_device))
    except ChanpruneError as exc:
        print(f"--finetune-device: {exc}", file=sys.stderr)
        return 2
    import signal
    handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(args, argv, finetune_device)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _main(args: argparse.Namespace, argv: list[str], finetune_device: str) -> int:
    torch.set_num_threads(1)
    methods = all_methods()
    if args.list:
        for m in methods:
            print(f"{m.id:32s} {m.family:14s} {json.dumps(m.describe)}")
        return 0
    recipe = protocol_recipe(args.protocol, args.quick) if args.protocol else copy.deepcopy(RECIPE)
    models = list(MODELS)
    targets = list(TARGETS)
    wanted = None
    round_cfg = copy.deepcopy(ROUND_TO)
    if args.quick:
        if not args.protocol:
            recipe = merge(recipe, QUICK["overrides"])
        models = [m for m in MODELS if m[2] in QUICK["models"]]
        targets = list(QUICK["targets"])
        wanted = list(QUICK["methods"])
        round_cfg.update(QUICK["round_to"])
    zoo = Path(args.zoo)
    if args.models:
        names = args.models.split(",")
        known = zoo_models(zoo) if args.protocol else MODELS
        unknown = [n for n in names if n not in {m[2] for m in known}]
        if unknown:
            print(f"unknown model(s) {unknown}; choose from {[m[2] for m in known]}", file=sys.stderr)
            return 2
        models = [m for m in known if m[2] in names]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [w for w in wanted if w not in {m.id for m in methods}]
        if unknown:
            print(f"unknown method(s) {unknown}; see --list", file=sys.stderr)
            return 2
    if args.targets:
        targets = [float(t) for t in args.targets.split(",")]
    if args.calibration_images is not None:
        recipe["calibration_images"] = args.calibration_images
    if args.seeds and "seeds" in recipe:
        recipe["seeds"] = [int(s) for s in args.seeds.split(",")]
    if wanted is not None:
        methods = [m for m in methods if m.id in wanted]
    if args.protocol:
        plan = [(m, targets, methods, False) for m in models]
        out_dir = Path(args.out) if args.out else protocol_dir(zoo, args.protocol)
    else:
        plan = _legacy_plan(args, models, targets, methods, wanted)
        out_dir = None

    t_start = time.perf_counter()
    for (model_name, data_name, folder), targets, methods, with_round_to in plan:
        if not (zoo / folder / "model.json").exists():
            print(f"[scoreboard] {zoo / folder}: checkpoint not present yet, skipped", flush=True)
            continue
        source_rows, selection = None, []
        if args.protocol:
            path = out_dir / f"scoreboard_{folder}.json"
            prev = (PROTOCOLS[args.protocol]["select"] or (None,))[0]
            source = None if prev is None else (
                Path(args.select_from) if args.select_from else protocol_dir(zoo, prev)) / f"scoreboard_{folder}.json"
            try:
                jobs, selection, source_rows = protocol_plan(args.protocol, methods, targets, source,
                                                             recipe["test_images"])
            except FileNotFoundError as exc:
                print(f"[scoreboard] {folder}: {exc}", file=sys.stderr)
                return 2
            if source is not None:  # a fine-tuned row must be the same pruned model as the row it was picked from
                picked_with = json.loads(source.read_text())["recipe"]["calibration_images"]
                if args.calibration_images not in (None, picked_with):
                    print(f"[scoreboard] {folder}: the rows were picked from a run with {picked_with} calibration "
                          f"images; drop --calibration-images or pass {picked_with}.", file=sys.stderr)
                    return 2
                recipe["calibration_images"] = picked_with
        else:
            path = results_path(folder, args.quick)
            jobs = [(t, m, None, True) for t in targets for m in methods]
            if with_round_to and not args.no_round_to:
                rt_target = round_cfg["target"] if not args.quick else targets[0]
                rt_jobs = [(rt_target, m, r, False) for m in methods if m.id in round_cfg["methods"]
                           for r in round_cfg["values"] if r is not None]
                jobs = ([] if args.only_round_to else jobs) + rt_jobs
            elif args.only_round_to:
                jobs = []
        if args.dry_run:
            done = {r["key"] for r in json.loads(path.read_text())["rows"]} if path.exists() else set()
            for s in selection:
                print(f"{folder:28s} selection {s['target_macs']:.2f} {s['family']:14s} {', '.join(s['chosen'])}"
                      + (f" (tied with the last: {', '.join(s['tied_with_last_chosen'])})"
                         if s["tied_with_last_chosen"] else ""))
            for t, m, r, _ in jobs:
                k = row_key(t, m.id, r)
                later = m.fallback_for and k not in (source_rows or {})
                print(f"{folder:28s} {k:48s} {'done' if k in done else ('if needed' if later else 'todo')}")
            continue
        t_model = time.perf_counter()
        ctx = Context(model_name, data_name, folder, recipe, finetune_device, zoo=zoo)
        header = {"schema": SCHEMA, "model": model_name, "data": data_name, "checkpoint": ctx.checkpoint, "zoo_record": ctx.record,
                  "model_kwargs": ctx.model_kwargs, "quick": args.quick, "recipe": recipe,
                  "round_to_study": None if args.protocol else round_cfg, "versions": versions(),
                  "dense": {"accuracy": ctx.dense_accuracy, "macs": ctx.dense_macs, "params": ctx.dense_params},
                  "ours_skipped": sorted(OURS_SKIP), "command": "python -m bench.scoreboard " + " ".join(argv)}
        if args.protocol:
            header["selection"] = selection
        else:
            header.pop("zoo_record")  # the original run's files: the shipped checkpoints' records are committed
        res = Results(path, header, empty={"rows": [], "attempts": {}})
        res.save()
        try:
            computed = run_jobs(ctx, res, jobs, args, source_rows)
        except Stopped:
            return 143
        res.log_invocation({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": header["command"], "rows_computed": computed,
                            "wall_seconds": time.perf_counter() - t_model})
    print(f"[scoreboard] done in {time.perf_counter() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
