"""TRP vs plain SVD decomposition, and TRP + channel pruning vs channel pruning alone.

    python -m bench.trp resnet20                       # writes bench/results/trp_resnet20.json
    python -m bench.trp resnet56 --train-limit 3000    # a smaller training subset (recorded in the JSON)

For one shipped Fashion-MNIST checkpoint:
  dense          the checkpoint: accuracy, MACs, params.
  trp_<s>_train  TRP training (scheme s): no GPU here, so TRP *fine-tunes the shipped checkpoint* on a stratified
                 training subset for a short schedule (default 2 epochs over 5,000 images, lr 0.01, cosine,
                 batch 128, energy e = 0.95, period m = 5, λ = 3e-4) — not the paper's 164-epoch training from
                 scratch. Wall time, ranks before/after, the rank trace.
  trp_<s>        the TRP-trained model decomposed at the training energy e, no fine-tune.
  trp_<s>_value  the same model decomposed with the official code's rule for TRP models, σ ≥ 0.05, no fine-tune.
  svd_<s>        plain SVD decomposition of the shipped checkpoint with the same energy rule, its threshold chosen
                 so the MACs match trp_<s> (largest threshold with MACs ≤ trp_<s>'s), no fine-tune.
  svd_<s>_ft     svd_<s> after a fine-tune with exactly TRP's training schedule (same images, epochs, lr).
  prune_only     the checkpoint pruned by L1 (uniform) to 33% of its MACs, BatchNorm re-estimated, then fine-tuned
                 (1 epoch over the same training subset, lr 0.01).
  trp_<s>_prune  trp_<s> pruned by the same L1 method to 33% of the *dense* MACs, same BN re-estimation and
                 fine-tune.
  latency        every final model timed interleaved on CPU (chanprune.measurement.latency, 1 thread, batch 1 and
                 32, medians over rounds).
Accuracy is on a fixed stratified 2,000-image subset of the test split (seed 0). Each finished row is written
to the JSON at once and skipped when the script is run again (models under runs/bench_trp/), so a killed run
resumes. Run it with OMP_NUM_THREADS=1 so its timings match the other benchmarks (1 thread).

Workaround, recorded in the JSON: the Fashion-MNIST training loader yields 1-channel batches with strides
(784, 1, 28, 1) (they also look channels-last), with which oneDNN's conv backward can corrupt the heap
(torch 2.13 CPU). During training every model gets a forward pre-hook that copies its input to standard
strides; it changes no value.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

import chanprune
from bench.harness import RESULTS, ROOT, Bench, Results, versions
from chanprune import L1Config
from chanprune.engine import TrainConfig, finetune
from chanprune.lowrank import DecomposeConfig, LowRank, TRPConfig, decompose, trp_train
from chanprune.measurement import latency

RUNS = ROOT / "runs" / "bench_trp"
TEST_SUBSET = 2000
PRUNE_TARGET = 0.33


@contextlib.contextmanager
def standard_strides(model):
    """Copy the input to standard contiguous strides before every forward (see the module docstring)."""
    handle = model.register_forward_pre_hook(
        lambda _m, args: (args[0].clone(memory_format=torch.contiguous_format), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class TRPBench(Bench):
    def __init__(self, args):
        super().__init__(f"{args.model}_fashion_mnist", "fashion_mnist", test_images=TEST_SUBSET)
        self.args = args
        self.name = args.model
        self.path = RESULTS / f"trp_{self.name}.json"
        self.runs = RUNS / self.name
        self.setup = {
            "checkpoint": f"checkpoints/{self.name}_fashion_mnist/model",
            "test_images": TEST_SUBSET,
            "train": {"epochs": args.epochs, "limit_train": args.train_limit, "lr": args.lr, "batch_size": 128,
                      "schedule": "cosine", "seed": 0},
            "trp": {"energy": args.energy, "period": args.period, "nuclear_weight": args.nuclear_weight,
                    "subgrad": "truncated", "layers": "default: k>1 convs with groups=1, except the first and strided"},
            "decompose_threshold": args.energy,
            "prune": {"method": "l1", "allocation": "uniform", "target_macs_of_dense": PRUNE_TARGET, "recover": "bn",
                      "finetune": {"epochs": 1, "limit_train": args.train_limit, "lr": 0.01}},
            "device": "cpu, 1 thread (no GPU)",
            "workaround": "training inputs copied to standard strides (oneDNN heap corruption with the loader's strides)",
        }
        self.results = Results(self.path, empty={"model": self.name, "data": "fashion_mnist", "setup": self.setup,
                                                 "rows": {}, "versions": versions()})
        self.doc = self.results.doc
        if self.doc.get("setup") != self.setup:
            raise SystemExit(f"{self.path} was written with other settings; delete it or pass the same options.")

    # ------------------------------------------------------------------ bookkeeping
    def done(self, key: str) -> bool:
        return key in self.doc["rows"]

    def put(self, key: str, row: dict) -> None:
        self.doc = self.results.update(lambda doc: doc["rows"].__setitem__(key, row))
        print(f"[{self.name}] {key}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in row.items() if not isinstance(v, (dict, list))), flush=True)

    def save(self, model, key: str) -> None:
        chanprune.save(model, self.runs / key / "model", history=getattr(model, "chanprune_history", None),
                       extra={"data": "fashion_mnist"})

    def model(self, key: str):
        return chanprune.load(self.runs / key / "model")

    def cost(self, model) -> dict:
        macs, params = self.count(model)
        return {"macs": macs, "params": params}

    def train_config(self, epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=self.args.lr, batch_size=128, limit_train=self.args.train_limit, seed=0)

    # ------------------------------------------------------------------ rows
    def run(self):
        if not self.done("dense"):
            self.put("dense", {"accuracy": self.accuracy(self.dense), **self.cost(self.dense)})
        dense_macs = self.doc["rows"]["dense"]["macs"]
        for scheme in self.args.schemes:
            self.trp_rows(scheme, dense_macs)
        self.prune_rows(self.args.schemes[0], dense_macs)
        if "latency" not in self.doc or self.args.remeasure:
            self.measure_latency()

    def trp_rows(self, s: str, dense_macs: int) -> None:
        key = f"trp_{s}_train"
        if not self.done(key):
            model = chanprune.load(ROOT / self.setup["checkpoint"])
            cfg = TRPConfig(scheme=s, energy=self.args.energy, period=self.args.period,
                            nuclear_weight=self.args.nuclear_weight)
            t0 = time.perf_counter()
            with standard_strides(model):
                h = trp_train(model, self.data, cfg, self.train_config(self.args.epochs), progress=False,
                              eval_each_epoch=False)
            wall = time.perf_counter() - t0
            self.save(model, key)
            info = h["trp"]
            self.put(key, {"accuracy": self.accuracy(model), "train_seconds": h["time_s"], "wall_seconds": wall,
                           "steps": h["global_step"], "projections": info["projections"],
                           "rank_sum_before": sum(info["ranks_before"].values()),
                           "rank_sum_after": sum(info["ranks_after"].values()),
                           "full_rank_sum": sum(v["full_rank"] for v in info["last_projection"].values()),
                           "ranks_before": info["ranks_before"], "ranks_after": info["ranks_after"],
                           "rank_sum_trace": [sum(t["ranks"]) for t in info["trace"]]})
        key = f"trp_{s}"
        if not self.done(key):
            trained = self.model(f"trp_{s}_train")
            small = decompose(trained, DecomposeConfig(scheme=s, threshold=self.args.energy), data=self.data)
            self.save(small, key)
            self.put(key, self.decomposed_row(small, dense_macs))
        key = f"trp_{s}_value"
        if not self.done(key):  # the official code's rule for TRP-trained models: keep σ ≥ 0.05
            trained = self.model(f"trp_{s}_train")
            small = decompose(trained, DecomposeConfig(scheme=s, rule="value", threshold=0.05), data=self.data)
            self.save(small, key)
            self.put(key, self.decomposed_row(small, dense_macs))
        key = f"svd_{s}"
        if not self.done(key):
            target = self.doc["rows"][f"trp_{s}"]["macs"] / dense_macs
            small = decompose(self.dense, DecomposeConfig(scheme=s, target_macs=target), data=self.data)
            self.save(small, key)
            self.put(key, {**self.decomposed_row(small, dense_macs), "matched_to": f"trp_{s}", "target_macs": target})
        key = f"svd_{s}_ft"
        if not self.done(key):
            small = self.model(f"svd_{s}")
            t0 = time.perf_counter()
            with standard_strides(small):
                h = finetune(small, self.data, epochs=self.args.epochs, lr=self.args.lr, limit_train=self.args.train_limit,
                             progress=False, eval_each_epoch=False)
            wall = time.perf_counter() - t0
            self.save(small, key)
            before = self.doc["rows"][f"svd_{s}"]  # a loaded model carries no history: the decomposition is that row's
            self.put(key, {**self.decomposed_row(small, dense_macs, before), "train_seconds": h["time_s"],
                           "wall_seconds": wall})

    def decomposed_row(self, small, dense_macs: int, rec: dict | None = None) -> dict:
        if rec is None:
            rec = small.chanprune_history[-1]
            rec = {"threshold": rec.get("threshold"), "layers_decomposed": rec.get("decomposed"),
                   "layers_skipped": rec.get("skipped")}
        ranks = {n: m.rank for n, m in small.named_modules() if isinstance(m, LowRank)}
        cost = self.cost(small)
        return {"accuracy": self.accuracy(small), **cost, "macs_kept": cost["macs"] / dense_macs,
                "threshold": rec.get("threshold"), "layers_decomposed": rec.get("layers_decomposed"),
                "layers_skipped": rec.get("layers_skipped"), "ranks": ranks}

    def prune_rows(self, s: str, dense_macs: int) -> None:
        for key, source in (("prune_only", None), (f"trp_{s}_prune", f"trp_{s}")):
            if self.done(key):
                continue
            base = self.dense if source is None else self.model(source)
            target = PRUNE_TARGET * dense_macs / self.cost(base)["macs"]
            if target >= 1:
                self.put(key, {"skipped": f"{source} already keeps {1 / target * PRUNE_TARGET:.1%} of the MACs"})
                continue
            t0 = time.perf_counter()
            pruned = chanprune.prune(base, L1Config(target_macs=target, recover="bn"), data=self.data)
            prune_s = time.perf_counter() - t0
            acc_bn = self.accuracy(pruned)
            t0 = time.perf_counter()
            with standard_strides(pruned):
                h = finetune(pruned, self.data, epochs=1, lr=0.01, limit_train=self.args.train_limit, progress=False,
                             eval_each_epoch=False)
            wall = time.perf_counter() - t0
            self.save(pruned, key)
            cost = self.cost(pruned)
            self.put(key, {"accuracy_bn": acc_bn, "accuracy": self.accuracy(pruned), **cost, "macs_kept": cost["macs"] / dense_macs,
                           "prune_seconds": prune_s, "train_seconds": h["time_s"], "wall_seconds": wall,
                           "verified": pruned.chanprune_history[-1]["verified"]})

    def measure_latency(self) -> None:
        models = {"dense": self.dense}
        for key, row in self.doc["rows"].items():
            if key == "dense" or key.endswith("_train") or "skipped" in row:
                continue
            if key.endswith("_ft"):  # same architecture as the un-fine-tuned row
                continue
            models[key] = self.model(key)
        lat = latency(models, tuple(self.example.shape[1:]), batch_sizes=(1, 32), repeats=self.args.repeats)
        self.doc["latency"] = {"repeats": self.args.repeats, "threads": torch.get_num_threads(),
                               "median_ms": {k: {str(bs): v[bs]["median_ms"] for bs in v} for k, v in lat.items() if k != "speedup"},
                               "speedup": {k: {str(bs): x for bs, x in v.items()} for k, v in lat["speedup"].items()}}
        self.doc = self.results.merge({"latency": self.doc["latency"]})
        print(f"[{self.name}] latency: " + json.dumps(self.doc["latency"]["speedup"]), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=["resnet20", "resnet56"])
    p.add_argument("--schemes", nargs="+", default=["channel"], choices=["channel", "spatial"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--energy", type=float, default=0.95)
    p.add_argument("--period", type=int, default=5)
    p.add_argument("--nuclear-weight", type=float, default=3e-4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--remeasure", action="store_true", help="time the models again")
    args = p.parse_args()
    t0 = time.perf_counter()
    TRPBench(args).run()
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
