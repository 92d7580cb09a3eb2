"""What every benchmark shares: the checkpoint, the test subset, BatchNorm re-estimation, the fine-tune, the
results file, the tie rule and the versions.

A benchmark builds one :class:`Bench` per checkpoint and one :class:`Results` per JSON file:

* :class:`Bench` loads ``<zoo>/<folder>/model`` (the ``chanprune.save`` format) and its ``record.json``, draws the
  fixed test subset (stratified, seed 0, batches of 500) and the calibration images (stratified subset of the
  training split), and measures: :meth:`Bench.accuracy` (always on the CPU), :meth:`Bench.recalibrate`
  (BatchNorm statistics re-estimated, exact average), :meth:`Bench.finetuned` (a copy fine-tuned with a
  :data:`FINETUNE` recipe on any device, the dense/pruned model left alone).
* :class:`Results` is a JSON file that several processes may fill at once: every write re-reads the file under
  an exclusive lock, applies one change (a row replaced by its key, a top-level part merged) and renames a
  temporary file over it, so an interrupted run loses at most the row it was computing and a rerun skips the rows
  already there. :func:`claim` lets one process own a row while it runs it.

The tie rule (:func:`compare`, :func:`compare_no_ft`) is the one every report uses: fine-tuned accuracies
(mean ± seed std) tie when they differ by no more than the larger std; single accuracies without a fine-tune tie
when they differ by no more than one binomial standard error of the difference on the test images.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import math
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import torch
import torch.nn as nn

import chanprune
from chanprune._atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CHECKPOINTS = ROOT / "checkpoints"

# chanprune.engine.finetune's arguments a recipe may set; ``train_images`` None means the whole training split.
FINETUNE = {"epochs": 1, "train_images": None, "lr": 0.01, "schedule": "cosine", "batch_size": 128,
            "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": True}


# ------------------------------------------------------------------------------------------ small helpers

def versions() -> dict:
    """Library versions and the machine, recorded in every results file."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        tp_version = version("torch-pruning")
    except PackageNotFoundError:
        tp_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_pruning": tp_version,
            "chanprune": chanprune.__version__, "numpy": np.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(), "mkldnn_enabled": torch.backends.mkldnn.enabled,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def device_name(device: str | torch.device) -> str:
    """'cpu', or 'cuda (<GPU name>)', so a report can say which fine-tunes ran where."""
    if not str(device).startswith("cuda"):
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"


def one_line(exc: BaseException) -> str:
    """An exception as one line for a failed row; where it came from when it is not chanprune's own message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb and not getattr(exc, "__module__", "").startswith("chanprune"):
        f = tb[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno})"
    return f"{type(exc).__name__}: {text[:300]}{where}"


def jsonable(x: Any) -> Any:
    """x with numpy scalars, tensors, dataclasses and non-finite floats made JSON-safe."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def merge(base: dict, over: dict) -> dict:
    """A deep copy of ``base`` with ``over`` laid over it, nested dicts merged key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mean_std(values: list[float]) -> dict:
    """{'values', 'mean', 'std'} of per-seed accuracies (sample std; 0 for one seed)."""
    return {"values": list(values), "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


# ------------------------------------------------------------------------------------------ the tie rule

def binomial_se(p1: float, p2: float, n: int) -> float:
    """Standard error (percentage points) of the difference of two accuracies measured on n images each."""
    f = lambda p: (p / 100) * (1 - p / 100) / max(n, 1)  # noqa: E731
    return 100 * math.sqrt(f(p1) + f(p2))


def compare(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'win' / 'tie' / 'loss' of a over b, each (mean, seed std); a difference within the larger std is a tie."""
    d = a[0] - b[0]
    return "tie" if abs(d) <= max(a[1], b[1]) else ("win" if d > 0 else "loss")


def compare_no_ft(a: float, b: float, n: int) -> str:
    """'win' / 'tie' / 'loss' of accuracy a over b on the same n test images; within one binomial SE is a tie."""
    d = a - b
    return "tie" if abs(d) <= binomial_se(a, b, n) else ("win" if d > 0 else "loss")


# ------------------------------------------------------------------------------------------ checkpoint and data

def test_batches(data, images: int, seed: int = 0, batch: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed stratified test subset (all of the split if it is smaller), normalized, in batches."""
    sub = data.test.subset(images, seed=seed)
    return [(data.normalize(sub.images[i:i + batch]), sub.labels[i:i + batch]) for i in range(0, len(sub), batch)]


def in_batches(x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


class Bench:
    """One checkpoint and its data: the dense model, its record, the test subset and the calibration images.

    ``zoo`` is the folder holding ``<folder>/model.json``, ``model.safetensors`` and ``record.json``
    (``checkpoints/`` for the shipped models, ``zoo/`` for a retrained zoo). Every accuracy is measured on
    the CPU in eval mode on the same test subset; the calibration images are the same for every method.
    """

    def __init__(self, folder: str, data_name: str | None = None, zoo: Path = CHECKPOINTS,
                 test_images: int = 2000, calibration_images: int = 512, calibration_seed: int = 0):
        self.folder, self.zoo = folder, Path(zoo)
        where = self.zoo / folder
        if not (where / "model.json").exists():
            raise FileNotFoundError(f"no checkpoint at {where}; train it first or pass the zoo folder that holds it.")
        record_path = where / "record.json"
        self.record = json.loads(record_path.read_text()) if record_path.exists() else {}
        spec = json.loads((where / "model.json").read_text())
        self.model_kwargs = spec.get("kwargs", spec.get("model_kwargs", self.record.get("model_kwargs", {})))
        self.data_name = data_name or self.record.get("data")
        if not self.data_name:
            raise ValueError(f"{record_path} names no data set; pass data_name (e.g. 'fashion_mnist').")
        self.data = chanprune.load_data(self.data_name)
        self.dense = chanprune.load(where / "model").eval()
        self.num_classes = self.data.num_classes
        self.example = self.data.example_inputs(1)
        self.dense_macs, self.dense_params = self.count(self.dense)
        self.test = test_batches(self.data, test_images)
        self.test_n = sum(len(y) for _, y in self.test)
        self.calibration_images = calibration_images
        x, y = self.data.calibration(calibration_images, seed=calibration_seed)
        self.calib_pair = (x, y)
        self.calib_batches = in_batches(x, y)
        self._dense_accuracy: float | None = None

    @property
    def checkpoint(self) -> str:
        """The checkpoint folder, relative to the repository where it lies inside it."""
        where = (self.zoo / self.folder).resolve()
        return str(where.relative_to(ROOT)) if where.is_relative_to(ROOT) else str(where)

    @property
    def dense_accuracy(self) -> float:
        if self._dense_accuracy is None:
            self._dense_accuracy = self.accuracy(self.dense)
        return self._dense_accuracy

    def count(self, model: nn.Module) -> tuple[int, int]:
        """(MACs, parameters) for one example input."""
        from chanprune.measurement import count_macs_params
        return count_macs_params(model, self.example)

    def accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy % on the test subset, on the CPU."""
        from chanprune.engine import evaluate
        return evaluate(model, self.test, device="cpu")["accuracy"]

    def recalibrate(self, model: nn.Module, num_batches: int | None = None, batch_size: int = 64,
                    source: Any = None) -> int:
        """Re-estimate the BatchNorm statistics in place (exact average); returns the images seen.

        By default on every calibration image; ``source`` (a DataBundle or batches) and ``num_batches`` choose
        others."""
        from chanprune.engine import recalibrate_bn
        batches = self.calib_batches if source is None else source
        n = len(batches) if num_batches is None else num_batches
        return recalibrate_bn(model, batches, num_batches=n, batch_size=batch_size, device="cpu")

    def finetuned(self, model: nn.Module, recipe: dict | None = None, seed: int = 0,
                  device: str | torch.device = "cpu") -> tuple[nn.Module, float]:
        """A copy of ``model`` fine-tuned with ``recipe`` (over :data:`FINETUNE`), back on the CPU in eval mode,
        and the seconds it took. The seed sets the batch order and the augmentation."""
        from chanprune.engine import finetune
        ft = {**FINETUNE, **(recipe or {})}
        tuned = copy.deepcopy(model)
        t0 = time.perf_counter()
        finetune(tuned, self.data, epochs=ft["epochs"], lr=ft["lr"], schedule=ft["schedule"],
                 batch_size=ft["batch_size"], momentum=ft["momentum"], nesterov=ft["nesterov"],
                 weight_decay=ft["weight_decay"], augment=ft["augment"], limit_train=ft["train_images"], seed=seed,
                 device=device, progress=False, eval_each_epoch=False)
        return tuned.cpu().eval(), time.perf_counter() - t0

    def prune(self, config, **kwargs) -> tuple[nn.Module, dict, float]:
        """``chanprune.prune`` of the dense model with the calibration images: (pruned model, its record, seconds)."""
        t0 = time.perf_counter()
        pruned = chanprune.prune(self.dense, config, data=kwargs.pop("data", self.data), **kwargs)
        return pruned.eval(), pruned.chanprune_history[-1], time.perf_counter() - t0


def kept(record: dict, what: str = "macs") -> float:
    """The fraction of the dense model's MACs (or params) a prune record says the pruned model keeps (the one place
    the benchmarks read this field of the record)."""
    return record[what]["kept"]


# ------------------------------------------------------------------------------------------ results files

def _lock_path(path: Path, what: str) -> Path:
    tag = hashlib.sha256(f"{path.resolve()}|{what}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"chanprune_bench_{tag}.lock"


def claim(path: Path, key: str, wait: bool = False):
    """An exclusive lock on one row of one results file (an open file; close it to release), so two processes
    never run the same row; None if another process holds it (with ``wait``: block until it is done)."""
    f = open(_lock_path(path, "row " + key), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        f.close()
        return None
    return f


class Results:
    """One JSON results file: a header (settings, versions), rows identified by a key, and any other parts.

    ``header`` is written over the file's own on every write (it describes the run now going). Rows are a list of
    dicts (``field``, default ``"rows"``) replaced by ``key(row)`` (default ``row["key"]``); a new file starts as
    ``empty`` (default: no rows). Nothing is cached
    between writes: each re-reads the file under the lock, so writers in other processes keep their rows.
    """

    def __init__(self, path: Path, header: dict | None = None, key: Callable[[dict], Hashable] | None = None,
                 empty: dict | None = None):
        self.path = Path(path)
        self.header = dict(header or {})
        self.key = key or (lambda r: r["key"])
        self.empty = {"rows": []} if empty is None else empty  # what a new file starts with
        self.doc = {**(self._read() or copy.deepcopy(self.empty)), **self.header}

    def _read(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def refresh(self) -> dict:
        """Pick up what other processes wrote since the last read."""
        self.doc = {**(self._read() or self.doc), **self.header}
        return self.doc

    def update(self, change: Callable[[dict], None] | None = None) -> dict:
        """Under an exclusive lock: re-read the file, apply ``change(doc)``, write it atomically; returns the doc."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(_lock_path(self.path, "file"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = {**(self._read() or copy.deepcopy(self.empty)), **self.header}
            if change is not None:
                change(doc)
            write_text_atomic(self.path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
            self.doc = doc
        return doc

    def save(self) -> dict:
        return self.update()

    def merge(self, part: dict) -> dict:
        """Set top-level parts of the file (each replaces the part of that name)."""
        return self.update(lambda doc: doc.update(part))

    # rows ------------------------------------------------------------------------------------------
    def rows(self, field: str = "rows") -> list[dict]:
        return self.doc.get(field, [])

    def row(self, key: Hashable, field: str = "rows") -> dict | None:
        return next((r for r in self.rows(field) if self.key(r) == key), None)

    def keys(self, field: str = "rows") -> set:
        return {self.key(r) for r in self.rows(field)}

    def add(self, row: dict, field: str = "rows") -> None:
        """Write ``row``, replacing the row with the same key."""
        k = self.key(row)
        self.update(lambda doc: doc.__setitem__(field, [r for r in doc.get(field, []) if self.key(r) != k] + [row]))

    def drop(self, key: Hashable, field: str = "rows") -> None:
        self.update(lambda doc: doc.__setitem__(field, [r for r in doc.get(field, []) if self.key(r) != key]))

    # how often a row was started, and the runs that wrote to the file -----------------------------------
    def set_attempts(self, key: str, n: int) -> None:
        self.update(lambda doc: doc.setdefault("attempts", {}).__setitem__(key, n))

    def attempt(self, key: str) -> int:
        """Count one more start of row ``key`` (a process that dies on it leaves the count behind)."""
        self.refresh()
        n = self.doc.get("attempts", {}).get(key, 0) + 1
        self.set_attempts(key, n)
        return n

    def log_invocation(self, entry: dict) -> None:
        self.update(lambda doc: doc.setdefault("invocations", []).append(entry))
