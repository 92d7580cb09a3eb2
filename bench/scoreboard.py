"""Issue 6, the scoreboard: every chanprune method against Torch-Pruning, on the same rows.

    python bench/scoreboard.py --quick          # smoke check, a few minutes
    python bench/scoreboard.py --supervise      # the full run (resumable; restarts after an abort)
    python bench/make_readme.py results         # README Results + PNG plots (bench/scoreboard_report.py)

Each process runs on one thread; start two (they share a model's file row by row) to use two cores.

For each model × data × MAC target × method: load the shipped checkpoint, prune it to the target, then record
accuracy before and after BatchNorm re-estimation (no fine-tune), accuracy after the same short fine-tune for
several seeds (mean ± std), MACs, params, interleaved CPU latency speed-up at batch 1 and 32, the wall time of
the pruning step, the calibration images used, the seed and the versions. One JSON per model
(``bench/results/scoreboard_<model>_<data>.json``); every finished row is written at once (atomically) and rows
already present are skipped, so a killed run resumes where it stopped.

Peers run through Torch-Pruning's own public API as its users call it: ``tp.pruner.BasePruner`` with
``tp.importance.*`` (Taylor gradients and Hessian per-sample gradients accumulated on the calibration images the
way Torch-Pruning's docstrings and benchmark do), the classifier in ``ignored_layers``, and Torch-Pruning's
``pruning_ratio`` found by bisection so that the MACs land within 1 % of the target. chanprune's methods are
discovered from ``chanprune.api.METHODS`` (a newly registered method joins without edits), except the
re-implementations of criteria Torch-Pruning already has (``OURS_SKIP``), which are compared through
Torch-Pruning's own implementation instead.

The same for everyone: the checkpoint, 512 calibration images (a stratified seed-0 subset of the training split),
BatchNorm re-estimation on exactly those images, the fine-tune recipe (``RECIPE``), the test subset, and the
latency protocol. Nothing here is tuned per method.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
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
OURS_SKIP = {"l1", "l2", "fpgm", "bn_scale", "taylor", "random"}
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
        best = None  # (|rel err|, ratio, model, mac_ratio, seconds)
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
        info = {"config": _jsonable(rec["config"]), "seconds": rec["seconds"], "verified": rec["verified"]}
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

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


class Context:
    """One model and data set, with everything every row shares."""

    def __init__(self, model_name: str, data_name: str, folder: str, recipe: dict, finetune_device: str = "cpu"):
        import chanprune
        from chanprune.measurement import count_macs_params

        self.model_name, self.data_name, self.folder, self.recipe = model_name, data_name, folder, recipe
        self.finetune_device = finetune_device  # only the fine-tune may move; pruning, accuracy, latency stay on CPU
        self.data = chanprune.load_data(data_name)
        self.dense = chanprune.load(ROOT / "checkpoints" / folder / "model").eval()
        self.num_classes = self.data.num_classes
        self.example = self.data.example_input(1)
        self.count = lambda m: count_macs_params(m, self.example)
        self.dense_macs, self.dense_params = self.count(self.dense)
        n = recipe["calibration_images"]
        x, y = self.data.calibration(n, seed=recipe["calibration_seed"])
        self.calib_pair = (x, y)
        self.calib_batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
        sub = self.data.test.subset(recipe["test_images"], seed=0)
        self.test = [(self.data.normalize(sub.images[i:i + 500]), sub.labels[i:i + 500])
                     for i in range(0, len(sub), 500)]
        self.test_n = len(sub)
        self.dense_accuracy = self.accuracy(self.dense)
        spec = json.loads((ROOT / "checkpoints" / folder / "model.json").read_text())
        self.model_kwargs = spec.get("kwargs", spec.get("model_kwargs", {}))

    def accuracy(self, model: nn.Module) -> float:
        from chanprune.engine import evaluate
        return evaluate(model, self.test, device="cpu")["accuracy"]

    def recalibrate(self, model: nn.Module) -> int:
        from chanprune.engine import recalibrate_bn
        return recalibrate_bn(model, self.calib_batches, num_batches=len(self.calib_batches), device="cpu")

    def finetuned_accuracy(self, model: nn.Module, seed: int) -> tuple[float, float]:
        from chanprune.engine import finetune
        ft = self.recipe["finetune"]
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        finetune(m, self.data, epochs=ft["epochs"], lr=ft["lr"], schedule=ft["schedule"], batch_size=ft["batch_size"],
                 momentum=ft["momentum"], nesterov=ft["nesterov"], weight_decay=ft["weight_decay"],
                 augment=ft["augment"], limit_train=ft["train_images"], seed=seed, device=self.finetune_device,
                 progress=False, eval_each_epoch=False)
        seconds = time.perf_counter() - t0
        return self.accuracy(m.cpu().eval()), seconds

    def latency(self, model: nn.Module) -> dict:
        from chanprune.measurement import latency
        lat = self.recipe["latency"]
        res = latency({"dense": self.dense, "pruned": model}, tuple(self.example.shape[1:]),
                      batch_sizes=lat["batch_sizes"], repeats=lat["repeats"], warmup=lat["warmup"],
                      threads=lat["threads"])
        return {f"b{bs}": {"dense_ms": res["dense"][bs]["median_ms"], "pruned_ms": res["pruned"][bs]["median_ms"],
                           "speedup": res["speedup"]["pruned"][bs]} for bs in lat["batch_sizes"]}


# ------------------------------------------------------------------------------------------ results file

def device_name(device: str) -> str:
    """'cpu', or 'cuda (<GPU name>)' so the README can say which fine-tunes ran where."""
    if not str(device).startswith("cuda"):
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"


def versions() -> dict:
    import chanprune
    import torch_pruning as tp
    from importlib.metadata import version
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_pruning": version("torch-pruning"),
            "torch_pruning_module_version": getattr(tp, "__version__", None), "chanprune": chanprune.__version__,
            "numpy": np.__version__, "cpu": cpu, "mkldnn_enabled": torch.backends.mkldnn.enabled}


class Results:
    """One model's JSON. Every write re-reads the file under a lock and merges by row key, so several processes can
    fill one file at once (each claims a row with :func:`_try_lock` before running it)."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.header = {k: v for k, v in header.items() if k not in ("created",)}
        self.doc = self._read() or {"schema": SCHEMA, **header, "rows": [], "attempts": {}}
        self.doc.update(self.header)

    def _read(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def refresh(self) -> None:
        """Pick up rows other processes wrote since the last read."""
        self.doc = {**(self._read() or self.doc), **self.header}

    def keys(self) -> set[str]:
        return {r["key"] for r in self.doc["rows"]}

    def row(self, key: str) -> dict | None:
        return next((r for r in self.doc["rows"] if r["key"] == key), None)

    def _update(self, change=None) -> None:
        """Under an exclusive lock: re-read the file, apply ``change(doc)``, write it atomically, keep it in memory."""
        import fcntl

        from chanprune._atomic import write_text_atomic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(_lock_path(self.path, "file"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = {**(self._read() or {"schema": SCHEMA, "rows": [], "attempts": {}}), **self.header}
            if change is not None:
                change(doc)
            write_text_atomic(self.path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
            self.doc = doc

    def save(self) -> None:
        self._update()

    def add(self, row: dict) -> None:
        self._update(lambda doc: doc.__setitem__("rows", [r for r in doc["rows"] if r["key"] != row["key"]] + [row]))

    def drop(self, key: str) -> None:
        self._update(lambda doc: doc.__setitem__("rows", [r for r in doc["rows"] if r["key"] != key]))

    def set_attempts(self, key: str, n: int) -> None:
        self._update(lambda doc: doc["attempts"].__setitem__(key, n))

    def attempt(self, key: str) -> int:
        self.refresh()
        n = self.doc["attempts"].get(key, 0) + 1
        self.set_attempts(key, n)
        return n

    def log_invocation(self, entry: dict) -> None:
        self._update(lambda doc: doc.setdefault("invocations", []).append(entry))


def row_key(target: float, method: str, round_to: int | None) -> str:
    return f"{target:.2f}|{method}|round_to={round_to}"


# ------------------------------------------------------------------------------------------ one row

def run_row(ctx: Context, method: Method, target: float, round_to: int | None, finetune: bool,
            mkldnn_finetune: bool = True) -> dict:
    row: dict[str, Any] = {
        "model": ctx.model_name, "data": ctx.data_name, "target_macs": target, "method": method.id,
        "family": method.family, "call": method.describe, "round_to": round_to,
        "calibration_images": ctx.recipe["calibration_images"], "seed": 0, "test_images": ctx.test_n,
    }
    t_row = time.perf_counter()
    try:
        pruned = method.run(ctx, target, round_to)
    except Exception as exc:  # a refused or failed prune is a row, not a crash
        row.update(status="failed", reason=_one_line(exc), row_seconds=time.perf_counter() - t_row)
        return row
    model = pruned.model
    macs, params = ctx.count(model)
    row.update(status="ok", prune_seconds=pruned.prune_seconds, search_seconds=pruned.search_seconds,
               info=_jsonable(pruned.info), macs=macs, params=params, macs_ratio=macs / ctx.dense_macs,
               params_ratio=params / ctx.dense_params,
               within_tolerance=abs(macs / ctx.dense_macs - target) <= ctx.recipe["tolerance"] * target)
    row["accuracy_before_bn"] = ctx.accuracy(model)
    row["bn_images"] = ctx.recalibrate(model)
    row["accuracy_no_ft"] = ctx.accuracy(model)
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
        row["accuracy_ft"] = {"seeds": list(ctx.recipe["seeds"]), "values": accs, "mean": float(np.mean(accs)),
                              "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0}
        row["finetune_seconds"] = secs
    row["row_seconds"] = time.perf_counter() - t_row
    return row


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb and not getattr(exc, "__module__", "").startswith("chanprune"):
        f = tb[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno})"
    return f"{type(exc).__name__}: {text[:300]}{where}"


# ------------------------------------------------------------------------------------------ driver

def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def results_path(folder: str, quick: bool) -> Path:
    return RESULTS / (f"scoreboard_quick.json" if quick else f"scoreboard_{folder}.json")


def _lock_path(path: Path, what: str) -> Path:
    import hashlib
    import tempfile
    tag = hashlib.sha256(f"{path.resolve()}|{what}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"chanprune_scoreboard_{tag}.lock"


def _try_lock(path: Path, key: str, wait: bool = False):
    """An exclusive lock on one row of one results file, so two processes never run the same row; None if taken
    (with ``wait``: block until the process holding it is done)."""
    import fcntl
    f = open(_lock_path(path, "row " + key), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        f.close()
        return None
    return f


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated checkpoint folders (default: all, in the run order)")
    p.add_argument("--methods", help="comma-separated method ids, e.g. tp.l1,ours.hierarchical (default: all)")
    p.add_argument("--targets", help="comma-separated kept-MAC fractions (default: 0.5,0.33,0.25)")
    p.add_argument("--seeds", help="comma-separated fine-tune seeds (default: 0,1,2)")
    p.add_argument("--quick", action="store_true", help="smoke check: one small model, one target, few methods")
    p.add_argument("--no-round-to", action="store_true", help="skip the round_to study")
    p.add_argument("--only-round-to", action="store_true", help="run only the round_to study")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    p.add_argument("--dry-run", action="store_true", help="print the planned rows (and which are done) and exit")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="a row whose process died this many times is recorded as failed (default 3; every attempt "
                        "after the first fine-tunes with oneDNN disabled)")
    p.add_argument("--finetune-device", default="cpu",
                   help="where the fine-tunes run: cpu (default), cuda[:N] or auto; pruning, accuracy and latency "
                        "always run on the CPU, and each row records its fine-tune device")
    p.add_argument("--supervise", action="store_true",
                   help="run the benchmark in a child process and restart it after an abort (e.g. a native crash)")
    return p.parse_args(argv)


def supervise(argv: list[str]) -> int:
    import signal
    child = [sys.executable, str(Path(__file__).resolve())] + [a for a in argv if a != "--supervise"]
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
        proc = subprocess.Popen(child)
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
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    torch.set_num_threads(1)
    methods = all_methods()
    if args.list:
        for m in methods:
            print(f"{m.id:32s} {m.family:14s} {json.dumps(m.describe)}")
        return 0
    recipe = copy.deepcopy(RECIPE)
    models = [m for m in MODELS]
    targets = list(TARGETS)
    wanted = None
    round_cfg = copy.deepcopy(ROUND_TO)
    if args.quick:
        recipe = _merge(recipe, QUICK["overrides"])
        models = [m for m in MODELS if m[2] in QUICK["models"]]
        targets = list(QUICK["targets"])
        wanted = list(QUICK["methods"])
        round_cfg.update(QUICK["round_to"])
    if args.models:
        names = args.models.split(",")
        unknown = [n for n in names if n not in {m[2] for m in MODELS}]
        if unknown:
            print(f"unknown model(s) {unknown}; choose from {[m[2] for m in MODELS]}", file=sys.stderr)
            return 2
        models = [m for m in MODELS if m[2] in names]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [w for w in wanted if w not in {m.id for m in methods}]
        if unknown:
            print(f"unknown method(s) {unknown}; see --list", file=sys.stderr)
            return 2
    if args.targets:
        targets = [float(t) for t in args.targets.split(",")]
    if args.seeds:
        recipe["seeds"] = [int(s) for s in args.seeds.split(",")]
    if wanted is not None:
        methods = [m for m in methods if m.id in wanted]

    t_start = time.perf_counter()
    if wanted is not None or args.quick or args.models:
        plan = [(m, targets, methods, True) for m in models]
    else:
        core = [m for m in methods if m.id not in EXTENDED]
        rest = [m for m in methods if m.id in EXTENDED]
        others = [m for m in models if m[2] != FULL_MODEL]
        first = [t for t in targets if abs(t - ROUND_TO["target"]) < 1e-9]
        later = [t for t in targets if t not in first]
        plan = [(m, targets, methods, True) if m[2] == FULL_MODEL else (m, first, core, True) for m in models]
        plan += [(m, later, core, False) for m in others]
        plan += [(m, targets, rest, False) for m in others]
    for (model_name, data_name, folder), targets, methods, with_round_to in plan:
        if not (ROOT / "checkpoints" / folder / "model.json").exists():
            print(f"[scoreboard] {folder}: checkpoint not present yet, skipped", flush=True)
            continue
        path = results_path(folder, args.quick)
        if args.dry_run:
            done = {r["key"] for r in json.loads(path.read_text())["rows"]} if path.exists() else set()
            rts = [r for r in round_cfg["values"] if r is not None] if with_round_to and not args.no_round_to else []
            for t in targets:
                for m in methods:
                    k = row_key(t, m.id, None)
                    print(f"{folder:28s} {k:48s} {'done' if k in done else ('if needed' if m.fallback_for else 'todo')}")
            for m in methods:
                if m.id in round_cfg["methods"]:
                    for r in rts:
                        k = row_key(round_cfg["target"] if not args.quick else targets[0], m.id, r)
                        print(f"{folder:28s} {k:48s} {'done' if k in done else ('if needed' if m.fallback_for else 'todo')}")
            continue
        t_model = time.perf_counter()
        ctx = Context(model_name, data_name, folder, recipe, finetune_device)
        header = {"model": model_name, "data": data_name, "checkpoint": f"checkpoints/{folder}",
                  "model_kwargs": ctx.model_kwargs, "quick": args.quick, "recipe": recipe,
                  "round_to_study": round_cfg, "versions": versions(),
                  "dense": {"accuracy": ctx.dense_accuracy, "macs": ctx.dense_macs, "params": ctx.dense_params},
                  "ours_skipped": sorted(OURS_SKIP), "command": "python bench/scoreboard.py " + " ".join(argv)}
        res = Results(path, header)
        res.save()
        computed = 0
        jobs = [(t, m, None, True) for t in targets for m in methods]
        if with_round_to and not args.no_round_to:
            rt_jobs = [(round_cfg["target"] if not args.quick else targets[0], m, r, False)
                       for m in methods if m.id in round_cfg["methods"] for r in round_cfg["values"] if r is not None]
            jobs = ([] if args.only_round_to else jobs) + rt_jobs
        elif args.only_round_to:
            jobs = []
        claim = None
        for target, method, round_to, ft in jobs:
            key = row_key(target, method.id, round_to)
            if claim is not None:
                claim.close()
            claim = _try_lock(path, key)
            if claim is None:
                print(f"[scoreboard] {folder} {key}: another process is running this row, skipped", flush=True)
                continue
            res.refresh()
            prev = res.row(key)
            if prev is not None:
                if not (prev["status"] == "failed" and prev.get("reason", "").startswith("the process died")
                        and not prev.get("mkldnn_off_tried")):
                    continue
                # rows that aborted before oneDNN-off retries existed: try once more, now with oneDNN off
                res.drop(key)
                res.set_attempts(key, 1)
            if method.fallback_for is not None:
                parent_key = row_key(target, method.fallback_for, round_to)
                if res.row(parent_key) is None:  # another process may be running the parent: wait for its verdict
                    _try_lock(path, parent_key, wait=True).close()
                    res.refresh()
                parent = res.row(parent_key)
                if parent is None or parent["status"] == "ok":
                    continue
            n = res.attempt(key)
            if n > args.max_attempts:
                res.add({"key": key, "model": model_name, "data": data_name, "target_macs": target, "method": method.id,
                         "family": method.family, "call": method.describe, "round_to": round_to, "status": "failed",
                         "reason": f"the process died {n - 1} times on this row (native abort, e.g. the oneDNN heap "
                                   "corruption seen in conv backward), also with oneDNN disabled; skipped",
                         "mkldnn_off_tried": n > 2})
                continue
            # After a native abort on this row, fine-tune it with oneDNN disabled (the heap corruption seen in
            # oneDNN's conv backward does not occur without it); recorded in the row.
            mkldnn_ft = n < 2
            print(f"[scoreboard] {folder} target {target:.0%} {method.id} round_to={round_to} ...", flush=True)
            try:
                row = run_row(ctx, method, target, round_to, finetune=ft, mkldnn_finetune=mkldnn_ft)
            except Stopped:  # a deliberate stop is not an abort: give the attempt back, so no oneDNN-off retry
                res.set_attempts(key, n - 1)
                print(f"[scoreboard] stopped during {key}", flush=True)
                return 143
            row["key"] = key
            row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            res.add(row)
            if row["status"] == "ok":
                ft_s = (f", FT {row['accuracy_ft']['mean']:.2f}±{row['accuracy_ft']['std']:.2f}"
                        if "accuracy_ft" in row else "")
                print(f"    MACs {row['macs_ratio']:.3f}, no-FT {row['accuracy_no_ft']:.2f}{ft_s}, "
                      f"speed-up b1 {row['latency']['b1']['speedup']:.2f} b32 {row['latency']['b32']['speedup']:.2f}, "
                      f"prune {row['prune_seconds']:.1f}s, row {row['row_seconds']:.0f}s", flush=True)
            else:
                print(f"    failed: {row['reason']}", flush=True)
            computed += 1
        if claim is not None:
            claim.close()
        res.log_invocation({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": header["command"],
                            "rows_computed": computed, "wall_seconds": time.perf_counter() - t_model})
    print(f"[scoreboard] done in {time.perf_counter() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
