"""The ``chanprune`` command: train | evaluate | analyze | prune | cacp | ucp | partition | finetune | trp | decompose | info | bench | export | report | demo.

Every command that measures or changes a model (all but info, export and report) prints a table and writes a
JSON record (model, data, method, config, seed, MACs, params, accuracy, latency, wall time, versions). Errors chanprune raises on purpose are printed as
one sentence (exit status 2), never as a stack trace.
"""
from __future__ import annotations

import functools
import inspect
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

# The library's messages name remedies as keyword arguments (``allow_exceed=True``, ``calibration=120``); a command
# rewrites those that are its own options into flags (``--allow-exceed``, ``--calibration 120``), so a CLI user reads
# the remedy in the terms they can act on. One table, built from the running command's signature.
_KEYWORD = re.compile(r"(?<![\w.\-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|\[[^\]]*\]|[^\s,;)]+)")
_OPTIONS: dict[str, inspect.Parameter] = {}


def cli_terms(message: str) -> str:
    """``message`` with every ``name=value`` that is an option of the running command written as its flag."""
    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        param = _OPTIONS.get(name)
        if param is None:
            return m.group(0)
        end = ""
        if value.endswith(".") and value[:1] not in "'\"[":
            value, end = value[:-1], "."
        option = "--" + name.replace("_", "-")
        if value == "None":
            return f"without {option}" + end
        if isinstance(param.default, bool) or value in ("True", "False"):
            return (option if value == "True" else "--no-" + option[2:]) + end
        return f"{option} {value.strip(chr(39) + chr(34))}" + end

    return _KEYWORD.sub(flag, message)


def _in_cli_terms(fn):
    """Run a command with its options known to :func:`cli_terms`; its ChanpruneErrors are rewritten in them."""
    from .errors import ChanpruneError

    options = {k: p for k, p in inspect.signature(fn).parameters.items()
               if isinstance(p.default, typer.models.OptionInfo)}

    @functools.wraps(fn)
    def run(*args, **kwargs):
        _OPTIONS.clear()
        _OPTIONS.update({k: inspect.Parameter(k, p.kind, default=p.default.default) for k, p in options.items()})
        try:
            return fn(*args, **kwargs)
        except ChanpruneError as exc:
            exc.args = (cli_terms(str(exc)),)
            raise

    return run


class _App(typer.Typer):
    """A Typer app whose commands speak CLI terms (:func:`_in_cli_terms`); the functions stay callable as written."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(fn):
            register(_in_cli_terms(fn))
            return fn

        return decorate


app = _App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
           help="Channel pruning for trained PyTorch CNNs: analysis, hierarchical pruning, measured results.")
console = Console()

# Options several commands share (one help text each).
DATA = typer.Option("fashion_mnist", help="data set name (chanprune info lists them)")
ROOT = typer.Option(None, help="folder with the data set's files (needed by cifar10 and image_folder)")
THREADS = typer.Option(None, help="CPU threads for the whole command, latency included (default: the CPUs this "
                                  "process may use, at most 4)")
SEED = typer.Option(0, help="random seed (data order, calibration subset, initialisation)")
TEST_LIMIT = typer.Option(None, help="evaluate on a fixed stratified test subset of this size (default: the whole test split)")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "resnet56_fashion_mnist" / "model"


def versions() -> dict:
    import torch
    import torch_pruning

    import chanprune

    return {"chanprune": chanprune.__version__, "torch": torch.__version__, "torch_pruning": getattr(torch_pruning, "__version__", "?"),
            "python": platform.python_version(), "machine": platform.machine()}


def write_record(path: Path, record: dict) -> Path:
    from . import distributed
    from ._atomic import write_text_atomic

    if not distributed.is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        return path
    record = {**record, "versions": versions()}
    write_text_atomic(path, json.dumps(record, indent=1, default=str))
    return path


def default_threads() -> int:
    """CPU threads when --threads is not given: the CPUs this process may use, at most 4 (more threads rarely
    help these small models, and an oversubscribed machine turns a 2 ms latency into hundreds)."""
    import os

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def _set_threads(threads: Optional[int]) -> int:
    import torch

    from .errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}.")
    n = default_threads() if threads is None else int(threads)
    torch.set_num_threads(n)
    return n


def _check_out(out, *, folder: bool) -> Path:
    """Refuse an output path that could not be written, before any work is done (never lose a finished result)."""
    from .errors import ConfigError

    path = Path(out)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is an existing file, but this command writes a folder there; "
                          "pass a folder path with --out.")
    if not folder and path.is_dir():
        raise ConfigError(f"--out {out} is a folder, but this command writes one JSON file there; "
                          "pass a file path such as --out record.json.")
    for parent in ([path] if folder else []) + list(path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out} lies under {parent}, which is a file; pass another --out.")
            break
    return path


def _speed(x: float) -> str:
    """A ratio of latencies in words: 1.37× faster, or 1.37× slower (never '0.73× faster')."""
    return f"{x:.2f}× faster" if x >= 1 else f"{1 / x:.2f}× slower"


def _latency(entry: dict, threads: int) -> str:
    """Median with its p10–p90 spread and the thread count it was measured with."""
    return (f"{entry['median_ms']:.2f} ms (p10–p90 {entry['p10_ms']:.2f}–{entry['p90_ms']:.2f}, "
            f"{threads} thread{'s' if threads != 1 else ''})")


def _load_model(path: str):
    import chanprune

    p = Path(path)
    if not (p.exists() or p.with_suffix(".json").exists() or Path(str(p) + ".json").exists()):
        from .errors import LoadError

        raise LoadError(f"no saved model at {path!r}; pass the stem written by chanprune (e.g. checkpoints/resnet56_fashion_mnist/model).")
    from .errors import LoadError
    from .io import read_spec

    name = read_spec(path)["name"]
    if name not in chanprune.list_models():
        raise LoadError(f"{path} is a {name!r} model, which no imported module registers; name the module that "
                        f"registers it before the command (chanprune --import MODULE ...), or install a package that "
                        f"registers it under the chanprune.models entry point.")
    return chanprune.load(path)


def _data(name: str, root: Optional[str]):
    import chanprune

    return chanprune.load_data(name, root=root) if root else chanprune.load_data(name)


def _measure(*args, **kwargs):
    # the function lives in chanprune.measurement; a submodule named like the function would shadow it
    from .measurement import measure

    return measure(*args, **kwargs)


def _check_fit(net, bundle, model: str) -> None:
    """A saved model and a data set that do not fit (channels, classes) fail with one sentence, not deep in a conv;
    one the model was not trained on, or a split of one class, is warned about."""
    from .data.fit import check_fit

    check_fit(net, bundle, label=f"model {model!r}")


def _model_and_data(model: str, data: str, root: Optional[str], device: str = "cpu"):
    from .device import resolve_device

    net = _load_model(model)
    bundle = _data(data, root)
    _check_fit(net, bundle, model)
    return net.to(resolve_device(device, net)), bundle


# --device / --nproc: where a command runs, and how many processes share it (torchrun, docs/distributed.md)
def _device_option():
    return typer.Option("auto", help="auto | cpu | cuda[:N]: where the model runs (auto: a GPU when present, else the CPU)")


def _nproc_option():
    return typer.Option(1, help="processes on this machine: runs the command under torchrun with this many (gloo on "
                                "the CPU, NCCL on GPUs); 1 runs it here")


def _spawn(nproc: int) -> None:
    """With --nproc N > 1 (and not already under torchrun), run this same command under torchrun and exit with it."""
    from . import distributed
    from .errors import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}.")
    if nproc == 1 or distributed.is_distributed():
        return
    import subprocess

    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "chanprune", *argv]
    sys.exit(subprocess.call(cmd))


def _save(model, path, **kwargs) -> None:
    """chanprune.save on rank 0 (every rank holds the same model); the others wait for the file."""
    import chanprune

    from . import distributed

    if distributed.is_main():
        chanprune.save(model, path, **kwargs)
    distributed.barrier()


def _ratio(name: str, value: Optional[float]) -> None:
    from .errors import ConfigError

    if value is not None and not (0 <= value < 1):
        raise ConfigError(f"--{name} must lie in [0, 1), got {value}.")


def _round_to(value: Optional[str]):
    """--round-to: a positive integer or 'auto'."""
    if value is None or value == "auto":
        return value
    from .errors import ConfigError

    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--round-to must be a positive integer or 'auto', not {value!r}.") from None


def _kv_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def _fmt_m(x: float) -> str:
    return f"{x / 1e6:.2f}M"


@app.callback()
def _options(imports: List[str] = typer.Option([], "--import", metavar="MODULE",
                                               help="import this module first (repeatable), e.g. one that registers "
                                                    "your model with chanprune.register_model; the current folder is "
                                                    "searched")):
    """Channel pruning for trained PyTorch CNNs: analysis, hierarchical pruning, measured results."""
    import importlib
    import os

    from .errors import ConfigError
    from .progress import show_progress

    show_progress(True)  # bars on the long steps (analysis, compensation, evaluation) when stderr is a terminal
    if imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: a module next to the user is found
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--import {module} failed ({exc}); pass a module name (mymodels, not mymodels.py) "
                              "found in the current folder or on PYTHONPATH.") from None


# ----------------------------------------------------------------------------------------------- info
@app.command()
def info(target: Optional[str] = typer.Argument(None, help="a saved model stem; omit to list the zoo and data sets")):
    """List the model zoo and data sets, or describe a saved model (spec, MACs, params, history)."""
    import chanprune

    if target is None:
        from .models import model_info

        console.print(_kv_table("Model zoo", [(n, model_info(n).get("family", ""), model_info(n).get("description", "")) for n in chanprune.list_models()],
                                ("name", "family", "description")))
        console.print("Data sets: " + ", ".join(chanprune.list_datasets()))
        return
    from .io import read_spec
    from .measurement import count_macs_params

    spec = read_spec(target)
    model = _load_model(target)
    from .data.fit import trained_on

    data_name = trained_on(model)
    shape = (model.chanprune_extra.get("input_shape")
             or next((h["input_shape"] for h in reversed(model.chanprune_history) if h.get("input_shape")), None))
    if shape is None and data_name in ("fashion_mnist", "mnist"):
        shape = [spec["kwargs"].get("in_channels", 1), 28, 28]
    shape = (1, *shape) if shape else None
    rows = [("name", spec["name"]), ("kwargs", json.dumps(spec["kwargs"])), ("data", str(data_name))]
    if shape:
        import torch

        macs, params = count_macs_params(model, torch.zeros(shape))
        rows += [("MACs", _fmt_m(macs)), ("params", _fmt_m(params))]
    steps = spec.get("history") or []
    rows.append(("history", f"{len(steps)} step(s)" + (": " + " → ".join(str(h.get("method", "?")) for h in steps) if steps else "")))
    console.print(_kv_table(f"Saved model {target}", rows, ("field", "value")))


# ---------------------------------------------------------------------------------------------- train
@app.command()
def train(model: str = typer.Argument(..., help="zoo name, e.g. resnet20"),
          data: str = DATA, root: Optional[str] = ROOT,
          epochs: int = typer.Option(3, help="training epochs"), lr: float = typer.Option(0.1, help="peak learning rate (SGD)"),
          batch_size: int = typer.Option(128, help="images per optimizer step"),
          limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
          seed: int = SEED, threads: Optional[int] = THREADS, out: str = typer.Option("runs/train", help="output folder"),
          device: str = _device_option(), nproc: int = _nproc_option()):
    """Train a zoo model from scratch (resumable: rerun the same command after an interruption)."""
    import chanprune
    from .engine import TrainConfig

    _spawn(nproc)
    t0 = time.time()
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    bundle = _data(data, root)
    net = chanprune.create_model(model, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, limit_train=limit, device=device)
    history = chanprune.train(net, bundle, cfg, checkpoint_dir=Path(out) / "state")
    _save(net, Path(out) / "model", extra={"data": data, "input_shape": list(bundle.example_inputs(1).shape[1:])})
    result = _measure(net, bundle, repeats=10, threads=threads)
    record = {"command": "train", "model": model, "data": data, "config": cfg.as_dict(), "seed": seed, **result,
              "wall_seconds": time.time() - t0, "history": history.get("epochs")}
    path = write_record(Path(out) / "record.json", record)
    console.print(_kv_table("Trained", [("accuracy", f"{result['accuracy']:.2f}%"), ("MACs", _fmt_m(result["macs"])),
                                        ("params", _fmt_m(result["params"])),
                                        *[(f"latency bs={bs}", _latency(e, threads)) for bs, e in result["latency"].items()],
                                        ("model", str(Path(out) / "model")), ("record", str(path))], ("", "")))


# ------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA, root: Optional[str] = ROOT,
             threads: Optional[int] = THREADS,
             out: str = typer.Option("runs/evaluate/record.json", help="JSON record path"),
             device: str = _device_option()):
    """Test accuracy, MACs, params and latency of a saved model."""
    t0 = time.time()
    _check_out(out, folder=False)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(model, data, root, device)

    result = _measure(net, bundle, repeats=10, threads=threads)
    console.print(_kv_table(f"{model} on {data}", [("accuracy", f"{result['accuracy']:.2f}%"), ("MACs", _fmt_m(result["macs"])),
                                                   ("params", _fmt_m(result["params"])),
                                                   *[(f"latency bs={bs}", _latency(e, threads)) for bs, e in result["latency"].items()]], ("", "")))
    write_record(Path(out), {"command": "evaluate", "model": model, "data": data, **result, "wall_seconds": time.time() - t0})
    console.print(f"wrote {out}")


# -------------------------------------------------------------------------------------------- analyze
@app.command()
def analyze(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA, root: Optional[str] = ROOT,
            reading: Optional[str] = typer.Option(None, help="gate | consumer_weight | producer_weight | feature (default: AnalysisConfig's, feature)"),
            labels: str = typer.Option("true", help="true: gradients of the true labels (empirical Fisher) | sampled: of "
                                                    "labels drawn from the model (true Fisher); gradient readings only"),
            rule: str = typer.Option("energy", help="numerical-rank rule: energy (keep η of Σσ²) | rel | abs | exact"),
            threshold: Optional[float] = typer.Option(None, help="rank-rule threshold (default: AnalysisConfig's, 0.999 energy)"),
            calibration: int = typer.Option(512, help="calibration images from the training split (64 or more)"),
            threads: Optional[int] = THREADS, out: str = typer.Option("runs/analyze", help="output folder"),
            device: str = _device_option(), nproc: int = _nproc_option()):
    """Effective filters per group, maximum safe rates and the network's maximum compression."""
    import chanprune
    from . import distributed
    from .analysis import AnalysisConfig

    _spawn(nproc)
    t0 = time.time()
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    given = {"reading": reading} if reading is not None else {}
    if threshold is not None or rule != "energy":  # another rule without a threshold takes that rule's own default
        given["threshold"] = threshold
    cfg = AnalysisConfig(labels=labels, rule=rule, calibration=calibration, **given)
    net, bundle = _model_and_data(model, data, root, device)
    result = chanprune.analyze(net, bundle, cfg)
    if not distributed.is_main():
        return
    console.print(result.table())
    out_dir = Path(out)
    curve = result.curve([0.9, 0.95, 0.98, 0.99, 0.995, 0.999], rule="energy")
    write_record(out_dir / "analysis.json", {"command": "analyze", "model": model, "data": data, "threads": threads,
                                             **result.to_dict(), "wall_seconds": time.time() - t0})
    plots = result.plot(out_dir) + [result.plot_curve(curve, out_dir / "curve.png")]
    write_record(out_dir / "curve.json", {"command": "analyze", "model": model, "data": data, "curve": curve})
    console.print(f"wrote {out_dir / 'analysis.json'}, {out_dir / 'curve.json'}, " + ", ".join(str(p) for p in plots))


# ---------------------------------------------------------------------------------------------- prune
def _method_names() -> list[str]:
    from . import api

    return sorted(api.METHODS)


def method_config(method: str, **kwargs):
    """The config object for a method name (criterion names, 'hierarchical', and whatever else is registered)."""
    from . import api
    from .errors import ConfigError

    if method not in api.METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(sorted(api.METHODS))}.")
    cls = api.METHODS[method][0]
    return cls(**{k: v for k, v in kwargs.items() if v is not None})


def _recovered(recover: str) -> str:
    from .recovery import get_recovery

    summary = get_recovery(recover).summary
    return f", {summary}" if summary else ""


def run_prune(net, bundle, cfg, *, finetune_epochs: int, finetune_limit: Optional[int], out: Path, label: str, repeats: int = 20,
              test_limit: Optional[int] = None, source: Optional[str] = None, threads: Optional[int] = None):
    """Prune, optionally fine-tune, measure before/after interleaved; write the pruned model and the record.

    ``test_limit``: evaluate on a fixed stratified subset of the test split of this size (None: all of it).
    ``source``: the dense model's saved stem, recorded so ``chanprune report`` can find it.
    """
    import chanprune
    from .device import model_device

    t0 = time.time()
    dense_acc = chanprune.evaluate(net, bundle, limit=test_limit)["accuracy"]
    tp = time.time()
    pruned = chanprune.prune(net, cfg, data=bundle)
    prune_seconds = time.time() - tp
    record = dict(pruned.chanprune_history[-1])
    acc_no_ft = chanprune.evaluate(pruned, bundle, limit=test_limit)["accuracy"]
    ft = None
    if finetune_epochs > 0:
        tft = time.time()
        ft = chanprune.finetune(pruned, bundle, epochs=int(finetune_epochs), lr=0.01, limit_train=finetune_limit,
                                progress=True, eval_each_epoch=False, device=str(model_device(pruned)))
        ft = {"epochs": finetune_epochs, "limit": finetune_limit, "seconds": time.time() - tft}
    result = _measure(pruned, bundle, baseline=net, repeats=repeats, accuracy=True, limit=test_limit, threads=threads)
    threads = result["threads"]
    pruned.chanprune_history[-1].update({"accuracy_no_finetune": acc_no_ft, "finetune": ft, "accuracy": result["accuracy"]})
    _save(pruned, out / "model", extra={**getattr(net, "chanprune_extra", {}), "data": bundle.name})
    full = {"command": "prune", "label": label, "test_images": test_limit or len(bundle.test), "model": getattr(net, "chanprune_spec", {}).get("name"), "data": bundle.name,
            "method": cfg.method, "config": cfg.to_dict(), "seed": cfg.seed,
            "dense": {"accuracy": dense_acc, "macs": result["baseline"]["macs"], "params": result["baseline"]["params"],
                      "latency_ms": result["baseline"]["latency_ms"], "latency": result["baseline"]["latency"]},
            "pruned": {"accuracy_no_finetune": acc_no_ft, "accuracy": result["accuracy"], "macs": result["macs"], "params": result["params"],
                       "latency_ms": result["latency_ms"], "latency": result["latency"]},
            "threads": threads,
            "speedup": result.get("speedup"), "finetune": ft, "prune_seconds": prune_seconds, "record": record,
            "wall_seconds": time.time() - t0, **({"source": str(source)} if source else {})}
    write_record(out / "record.json", full)
    rows = [
        ("accuracy", f"{dense_acc:.2f}%", f"{acc_no_ft:.2f}% (no fine-tune{_recovered(cfg.recover)})"
         + (f" → {result['accuracy']:.2f}% fine-tuned" if ft else "")),
        ("MACs", _fmt_m(result["baseline"]["macs"]), f"{_fmt_m(result['macs'])} ({result['macs'] / result['baseline']['macs']:.1%})"),
        ("params", _fmt_m(result["baseline"]["params"]), f"{_fmt_m(result['params'])} ({result['params'] / result['baseline']['params']:.1%})"),
    ]
    for bs, x in (result.get("speedup") or {}).items():
        rows.append((f"latency bs={bs}", _latency(result["baseline"]["latency"][bs], threads),
                     f"{_latency(result['latency'][bs], threads)}, {_speed(x)}"))
    where = f"{test_limit:,}-image stratified test subset" if test_limit else f"{len(bundle.test):,} test images"
    console.print(_kv_table(f"{label}: before / after (accuracy on {where})", rows, ("", "before", "after")))
    if record.get("warning"):
        console.print(f"[yellow]warning:[/yellow] {record['warning']}")
    console.print(f"wrote {out / 'model.json'}, {out / 'model.safetensors'}, {out / 'record.json'}")
    return pruned, full


@app.command()
def prune(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA, root: Optional[str] = ROOT,
          method: str = typer.Option("hierarchical", help="one of: " + ", ".join(_method_names())),
          target_macs: Optional[float] = typer.Option(None, help="fraction of MACs to keep, e.g. 0.5 (default: 0.5 when "
                                                                  "no other target is given)"),
          target_params: Optional[float] = typer.Option(None, help="fraction of parameters to keep, e.g. 0.5"),
          ratio: Optional[float] = typer.Option(None, help="fraction of channels to remove per group (instead of a target)"),
          allocation: Optional[str] = typer.Option(None, help="how the target is spread over layers: uniform | global "
                                                              "(criterion methods); proportional | greedy (hierarchical)"),
          round_to: Optional[str] = typer.Option(None, help="round kept channels up to a multiple of N, or 'auto' (fastest widths measured in onnxruntime)"),
          calibration: Optional[int] = typer.Option(None, help="calibration images from the training split (method's default: "
                                                               "256, hierarchical 512, CP/CaP 128)"),
          recover: Optional[str] = typer.Option(None, help="none | bn | compensate | compensate+bn (BN re-estimated on "
                                                           "the calibration images)"),
          allow_exceed: bool = typer.Option(False, help="hierarchical: prune beyond the analysis maximum"),
          finetune_epochs: int = typer.Option(0, help="whole epochs of fine-tuning after pruning (0: none)"),
          finetune_limit: Optional[int] = typer.Option(None, help="fine-tune on a stratified subset of this many training images"),
          test_limit: Optional[int] = TEST_LIMIT, seed: int = SEED, threads: Optional[int] = THREADS,
          out: str = typer.Option("runs/prune", help="output folder"),
          device: str = _device_option(), nproc: int = _nproc_option(),
          report: bool = typer.Option(False, "--report", help="also write report.html (one self-contained page) next to the record")):
    """Prune a saved model to a MAC/params target (or a ratio), measure it, save it."""
    _spawn(nproc)
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    _ratio("ratio", ratio)
    if finetune_epochs < 0:
        from .errors import ConfigError

        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}; pass 0 to skip fine-tuning.")
    if method == "cacp":
        from .errors import ConfigError

        raise ConfigError("CACP searches once for a family of rates; run `chanprune cacp MODEL --support ... --export ...` instead.")
    extra = {"allow_exceed": allow_exceed} if method == "hierarchical" else {}
    cfg = method_config(method, target_macs=target_macs, target_params=target_params, ratio=ratio, allocation=allocation,
                        round_to=_round_to(round_to), calibration=calibration, recover=recover, seed=seed, **extra)
    net, bundle = _model_and_data(model, data, root, device)
    pruned, full = run_prune(net, bundle, cfg, finetune_epochs=finetune_epochs, finetune_limit=finetune_limit, out=Path(out),
                             label=method, test_limit=test_limit, source=model, threads=threads)
    if report:
        _write_report(Path(out), pruned, net, bundle, full)


def _floats_after(args: list[str], flag: str) -> tuple[list[float] | None, list[str]]:
    """The numbers after ``flag`` in ``args`` (up to the next option) and the other arguments."""
    from .errors import ConfigError

    if flag not in args:
        return None, args
    i = args.index(flag)
    j = i + 1
    while j < len(args) and not args[j].startswith("--"):
        j += 1
    try:
        values = [float(v) for v in args[i + 1:j]]
    except ValueError:
        raise ConfigError(f"{flag} takes numbers (fractions of the MACs kept), e.g. {flag} 0.3 0.5 0.7.") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one rate, e.g. {flag} 0.3 0.5 0.7.")
    return values, args[:i] + args[j:]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cacp(ctx: typer.Context, model: str = typer.Argument(..., help="saved model stem"), data: str = DATA,
         root: Optional[str] = ROOT, warmup: int = typer.Option(100, help="random warm-up episodes"),
         episodes: int = typer.Option(800, help="training episodes after the warm-up"),
         val_images: int = typer.Option(1000, help="validation images carved from the training split for the reward"),
         calibration: int = typer.Option(256, help="calibration images for the closed-form refits"),
         criterion: str = typer.Option("l1", help="how channels are chosen within each searched rate (a criterion name, e.g. l1)"),
         reward_norm: str = typer.Option("running_mean", help="running_mean | paper_table | none"),
         amc: bool = typer.Option(False, help="AMC mode: no rate input, one search per support rate"),
         policy: Optional[str] = typer.Option(None, help="a saved policy stem: export from it without searching"),
         test_limit: Optional[int] = typer.Option(None, help="evaluate on a fixed stratified test subset of this size"),
         seed: int = SEED, out: str = typer.Option("runs/cacp", help="output folder")):
    """One CACP search, pruned models at many rates: --support 0.3 0.5 0.7 --export 0.3 0.4 0.5 0.6 0.7 (fractions of MACs KEPT)."""
    import chanprune
    from .errors import ConfigError
    from .methods.cacp import CACPConfig, CACPFamily, search

    _check_out(out, folder=True)
    support, rest = _floats_after(list(ctx.args), "--support")
    export, rest = _floats_after(rest, "--export")
    if rest:
        raise ConfigError(f"unexpected argument(s) {' '.join(rest)}; rates go after --support and --export, e.g. --export 0.3 0.5.")
    net, bundle = _model_and_data(model, data, root)
    outp = Path(out)
    t0 = time.time()
    if policy:
        family = CACPFamily.load(policy, net, bundle)
    else:
        cfg = CACPConfig(support=tuple(support or (0.3, 0.5, 0.7)), conditional=not amc, warmup=warmup, episodes=episodes,
                         val_images=val_images, calibration=calibration, criterion=criterion, reward_norm=reward_norm, seed=seed)
        with console.status("CACP search") as status:
            def progress(e):
                status.update(f"CACP search: episode {e['episode'] + 1}/{(cfg.warmup + cfg.episodes) * (1 if cfg.conditional else len(cfg.support))}, "
                              f"R={e['rate']:g}, validation top-1 {e['accuracy']:.1f}%")
            family = CACPFamily(net, search(net, cfg, bundle, progress=progress), bundle)
        family.save(outp / "policy")
    search_seconds = time.time() - t0
    rates = export or list(family.policy.config.support)
    dense_acc = chanprune.evaluate(net, bundle, limit=test_limit)["accuracy"]
    rows, members = [], []
    for rate in rates:
        pruned = family.at(rate)
        acc = chanprune.evaluate(pruned, bundle, limit=test_limit)["accuracy"]
        rec = pruned.chanprune_history[-1]
        chanprune.save(pruned, outp / f"rate_{rate:g}" / "model", history=pruned.chanprune_history, extra={"data": bundle.name})
        members.append({"rate": rate, "accuracy_no_finetune": acc, "macs": rec["macs"], "params": rec["params"],
                        "keep": rec["cacp"]["keep"], "verified": rec["verified"]})
        rows.append((f"{rate:.0%}", f"{rec['macs']['kept']:.1%}", f"{rec['params']['kept']:.1%}", f"{acc:.2f}%"))
    write_record(outp / "record.json", {
        "command": "cacp", "model": getattr(net, "chanprune_spec", {}).get("name"), "data": bundle.name,
        "rate_convention": "fraction of the dense model's MACs kept", "config": family.policy.config.to_dict(),
        "dense_accuracy": dense_acc, "test_images": test_limit or len(bundle.test), "search_seconds": family.policy.seconds,
        "wall_seconds": time.time() - t0, "loaded_policy": policy, "members": members})
    where = f"{test_limit:,}-image stratified test subset" if test_limit else f"{len(bundle.test):,} test images"
    console.print(_kv_table(f"CACP family (dense {dense_acc:.2f}%; accuracy on {where}, consumers refit, no fine-tune)", rows,
                            ("MACs kept (asked)", "MACs kept", "params kept", "accuracy")))
    console.print(f"search {family.policy.seconds:.0f}s; wrote {outp / 'policy.json'}, {outp}/rate_*/model.*, {outp / 'record.json'}"
                  if not policy else f"exported from {policy} in {search_seconds:.0f}s; wrote {outp}/rate_*/model.*, {outp / 'record.json'}")


# ------------------------------------------------------------------------------------------- ucp
@app.command()
def ucp(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA, root: Optional[str] = ROOT,
        target_macs: Optional[float] = typer.Option(None, help="fraction of MACs to keep (top-k by MSEB score); omit for the paper's mean rule"),
        threshold_factor: float = typer.Option(0.999, help="mean rule: keep channels scoring above this × the layer mean"),
        structure: str = typer.Option("auto", help="auto | basic (residual stages pruned uniformly) | bottleneck (middle convs only)"),
        stage_score: str = typer.Option("mseb", help="score of a residual stage: mseb (sum of its blocks' MSEBs) | l1"),
        mseb_init: str = typer.Option("checkpoint", help="train the MSEB network from the checkpoint (neutral MSEBs) | scratch"),
        mseb_epochs: int = typer.Option(1, help="epochs of training with MSEBs before scoring"),
        recovery: str = typer.Option("finetune", help="scratch (re-initialise, the paper) | finetune | compensate (no training)"),
        retrain_epochs: int = typer.Option(1, help="epochs of the recovery training (scratch / finetune)"),
        limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
        test_limit: Optional[int] = typer.Option(None, help="evaluate on a fixed stratified test subset of this size"),
        seed: int = SEED, threads: Optional[int] = THREADS, out: str = typer.Option("runs/ucp", help="output folder")):
    """UCP: train with MSEB attention, prune residual stages uniformly by the learned scores, retrain; measure, save."""
    from .methods.ucp import UCPConfig

    _check_out(out, folder=True)
    threads = _set_threads(threads)
    cfg = UCPConfig(rule="mean" if target_macs is None else "target", target_macs=target_macs,
                    threshold_factor=threshold_factor, structure=structure, stage_score=stage_score, mseb_init=mseb_init,
                    mseb_epochs=mseb_epochs, recovery=recovery, retrain_epochs=retrain_epochs, limit_train=limit, seed=seed)
    net, bundle = _model_and_data(model, data, root)
    run_prune(net, bundle, cfg, finetune_epochs=0, finetune_limit=None, out=Path(out), label="ucp", test_limit=test_limit,
              threads=threads)


@app.command("partition")
def partition_cmd(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA,
                  root: Optional[str] = ROOT, parts: int = typer.Option(2, "--parts", "-P", help="P, the number of devices"),
                  layers: Optional[str] = typer.Option(None, help="comma-separated run of layer names (default: every Linear but the last)"),
                  mode: str = typer.Option("block_diagonal", help="block_diagonal | block_topk | balanced"),
                  assignment: str = typer.Option("contiguous", help="contiguous | energy"),
                  budget: float = typer.Option(0.25, help="block_topk: fraction of the all-to-all traffic allowed"),
                  recover: str = typer.Option("none", help="none | compensate | bn | compensate+bn"),
                  calibration: int = typer.Option(256, help="calibration images"),
                  finetune_epochs: int = typer.Option(0, help="whole epochs of fine-tuning after partitioning (0: none)"),
                  finetune_limit: Optional[int] = typer.Option(None, help="fine-tune on a stratified subset of this many training images"),
                  test_limit: Optional[int] = TEST_LIMIT, seed: int = SEED, threads: Optional[int] = THREADS,
                  out: str = typer.Option("runs/partition", help="output folder")):
    """Partition pruning: cut a run of layers into P independent blocks, measure it, save it."""
    from .errors import ConfigError
    from .partition import PartitionConfig

    _check_out(out, folder=True)
    threads = _set_threads(threads)
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}; pass 0 to skip fine-tuning.")
    names = tuple(n.strip() for n in layers.split(",") if n.strip()) if layers else ()
    cfg = PartitionConfig(parts=parts, layers=names, mode=mode, assignment=assignment, budget=budget, recover=recover,
                          calibration=calibration, seed=seed)
    net, bundle = _model_and_data(model, data, root)
    run_prune(net, bundle, cfg, finetune_epochs=finetune_epochs, finetune_limit=finetune_limit, out=Path(out),
              label=f"partition P={parts} {mode}/{assignment}", test_limit=test_limit, threads=threads)


# ------------------------------------------------------------------------------------------- finetune
@app.command()
def finetune(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA, root: Optional[str] = ROOT,
             epochs: int = typer.Option(1, help="whole epochs"), lr: float = typer.Option(0.01, help="peak learning rate (SGD)"),
             limit: Optional[int] = typer.Option(None, help="fine-tune on a stratified subset of this many training images"),
             threads: Optional[int] = THREADS, out: str = typer.Option("runs/finetune", help="output folder"),
             batch_size: int = typer.Option(128, help="global batch (shared by the --nproc processes)"),
             device: str = _device_option(), nproc: int = _nproc_option()):
    """Fine-tune a saved (e.g. pruned) model; resumable (with any --nproc)."""
    import chanprune

    _spawn(nproc)
    t0 = time.time()
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(model, data, root, device)
    before = chanprune.evaluate(net, bundle)["accuracy"]
    history = chanprune.finetune(net, bundle, epochs=epochs, lr=lr, limit_train=limit, batch_size=batch_size,
                                 checkpoint_dir=Path(out) / "state", device=device)
    after = chanprune.evaluate(net, bundle)["accuracy"]
    _save(net, Path(out) / "model", extra={**getattr(net, "chanprune_extra", {}), "data": data})
    write_record(Path(out) / "record.json", {"command": "finetune", "model": model, "data": data, "epochs": epochs, "lr": lr,
                                             "limit": limit, "batch_size": batch_size, "device": history["device"],
                                             "processes": history["processes"], "train_seconds": history["time_s"],
                                             "accuracy_before": before, "accuracy": after, "wall_seconds": time.time() - t0})
    console.print(_kv_table("Fine-tuned", [("accuracy", f"{before:.2f}% → {after:.2f}%")], ("", "")))


# ------------------------------------------------------------------------------------ trp / decompose
def _lowrank_report(label: str, net, bundle, small, *, acc: dict, test_limit: Optional[int], out: Path, record: dict,
                    t0: float, repeats: int = 20, threads: Optional[int] = None) -> dict:
    """Measure ``small`` against ``net`` (interleaved latency), save it, write the record, print the table."""

    result = _measure(small, bundle, baseline=net, repeats=repeats, accuracy=False, threads=threads)
    threads = result["threads"]
    _save(small, out / "model", extra={**getattr(net, "chanprune_extra", {}), "data": bundle.name})
    dec = small.chanprune_history[-1]
    full = {**record, "data": bundle.name, "test_images": test_limit or len(bundle.test), "accuracy": acc,
            "dense": {"macs": result["baseline"]["macs"], "params": result["baseline"]["params"],
                      "latency_ms": result["baseline"]["latency_ms"]},
            "decomposed": {"macs": result["macs"], "params": result["params"], "latency_ms": result["latency_ms"],
                           "layers_decomposed": dec["decomposed"], "layers_skipped": dec["skipped"],
                           "threshold": dec["threshold"]},
            "speedup": result.get("speedup"), "threads": threads, "layers": dec["layers"], "wall_seconds": time.time() - t0}
    write_record(out / "record.json", full)
    rows = [(k, f"{v:.2f}%") for k, v in acc.items() if v is not None]
    rows += [("MACs", f"{_fmt_m(result['baseline']['macs'])} → {_fmt_m(result['macs'])} ({result['macs_kept']:.1%})"),
             ("params", f"{_fmt_m(result['baseline']['params'])} → {_fmt_m(result['params'])} ({result['params_kept']:.1%})"),
             ("layers", f"{dec['decomposed']} decomposed, {dec['skipped']} left (no MAC saving)")]
    for bs, x in (result.get("speedup") or {}).items():
        rows.append((f"latency bs={bs}", f"{_latency(result['baseline']['latency'][bs], threads)} → "
                                         f"{_latency(result['latency'][bs], threads)}, {_speed(x)}"))
    where = f"{test_limit:,}-image stratified test subset" if test_limit else f"{len(bundle.test):,} test images"
    console.print(_kv_table(f"{label} (accuracy on {where})", rows, ("", "")))
    console.print(f"wrote {out / 'model.json'}, {out / 'model.safetensors'}, {out / 'record.json'}")
    return full


@app.command()
def trp(model: str = typer.Argument(..., help="saved model stem (TRP fine-tunes it)"), data: str = DATA,
        root: Optional[str] = ROOT, scheme: str = typer.Option("channel", help="channel | spatial"),
        energy: float = typer.Option(0.9, help="energy threshold e of the projection"),
        period: int = typer.Option(5, help="project every m optimizer steps"),
        nuclear_weight: float = typer.Option(3e-4, help="λ of the nuclear-norm sub-gradient (0: off)"),
        epochs: int = typer.Option(1, help="training epochs"), lr: float = typer.Option(0.01, help="peak learning rate (SGD)"),
        batch_size: int = typer.Option(128, help="images per optimizer step"),
        limit: Optional[int] = typer.Option(None, help="train on a stratified subset of this many images"),
        decompose_threshold: Optional[float] = typer.Option(None, help="energy threshold of the final decomposition (default: --energy)"),
        test_limit: Optional[int] = TEST_LIMIT, seed: int = SEED, threads: Optional[int] = THREADS,
        out: str = typer.Option("runs/trp", help="output folder"),
        device: str = _device_option(), nproc: int = _nproc_option()):
    """Train a saved model with TRP (periodic low-rank projection + nuclear norm), then decompose it; resumable."""
    import chanprune
    from .engine import TrainConfig
    from .device import model_device
    from .lowrank import DecomposeConfig, TRPConfig, decompose, trp_train

    _spawn(nproc)
    t0 = time.time()
    cfg = TRPConfig(scheme=scheme, energy=energy, period=period, nuclear_weight=nuclear_weight)
    dcfg = DecomposeConfig(scheme=scheme, threshold=energy if decompose_threshold is None else decompose_threshold,
                           include_linear=False)
    tcfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, limit_train=limit, device=device)
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(model, data, root, device)
    dense = chanprune.load(model).to(model_device(net))
    acc_dense = chanprune.evaluate(dense, bundle, limit=test_limit)["accuracy"]
    history = trp_train(net, bundle, cfg, tcfg, checkpoint_dir=Path(out) / "state", eval_each_epoch=False)
    acc_trained = chanprune.evaluate(net, bundle, limit=test_limit)["accuracy"]
    _save(net, Path(out) / "trained", extra={"data": data})
    small = decompose(net, dcfg, data=bundle)
    acc_small = chanprune.evaluate(small, bundle, limit=test_limit)["accuracy"]
    info_ = history["trp"]
    record = {"command": "trp", "model": model, "method": "trp", "config": cfg.to_dict(), "train_config": tcfg.as_dict(),
              "decompose_config": dcfg.to_dict(), "seed": seed, "train_seconds": history["time_s"],
              "ranks_before": info_["ranks_before"], "ranks_after": info_["ranks_after"], "projections": info_["projections"]}
    acc = {"accuracy dense": acc_dense, "accuracy after TRP": acc_trained, "accuracy decomposed": acc_small}
    _lowrank_report(f"TRP ({scheme}, e={energy}, m={period}, λ={nuclear_weight:g})", dense, bundle, small, acc=acc,
                    test_limit=test_limit, out=Path(out), record=record, t0=t0, threads=threads)


@app.command()
def decompose(model: str = typer.Argument(..., help="saved model stem"), data: str = DATA,
              root: Optional[str] = ROOT, scheme: str = typer.Option("channel", help="channel | spatial"),
              rule: str = typer.Option("energy", help="energy | value"),
              threshold: float = typer.Option(0.9, help="energy fraction kept, or the σ value threshold"),
              target_macs: Optional[float] = typer.Option(None, help="keep at most this fraction of the MACs (chooses the energy threshold)"),
              include_strided: bool = typer.Option(False, help="also decompose strided convs"),
              finetune_epochs: int = typer.Option(0, help="whole epochs of fine-tuning after decomposing (0: none)"),
              finetune_limit: Optional[int] = typer.Option(None, help="fine-tune on a stratified subset of this many training images"),
              test_limit: Optional[int] = TEST_LIMIT, threads: Optional[int] = THREADS,
              out: str = typer.Option("runs/decompose", help="output folder"), device: str = _device_option()):
    """Plain SVD decomposition of a trained model (each chosen layer → two layers of rank r), optionally fine-tuned."""
    import chanprune
    from .errors import ConfigError
    from .lowrank import DecomposeConfig
    from .lowrank import decompose as _decompose

    t0 = time.time()
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}; pass 0 to skip fine-tuning.")
    cfg = DecomposeConfig(scheme=scheme, rule=rule, threshold=threshold, target_macs=target_macs, include_strided=include_strided)
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(model, data, root, device)
    acc_dense = chanprune.evaluate(net, bundle, limit=test_limit)["accuracy"]
    small = _decompose(net, cfg, data=bundle)
    acc_small = chanprune.evaluate(small, bundle, limit=test_limit)["accuracy"]
    acc = {"accuracy dense": acc_dense, "accuracy decomposed": acc_small, "accuracy fine-tuned": None}
    if finetune_epochs > 0:
        chanprune.finetune(small, bundle, epochs=finetune_epochs, lr=0.01, limit_train=finetune_limit, eval_each_epoch=False,
                           device=device)
        acc["accuracy fine-tuned"] = chanprune.evaluate(small, bundle, limit=test_limit)["accuracy"]
    record = {"command": "decompose", "model": model, "method": "decompose", "config": cfg.to_dict(),
              "finetune": {"epochs": finetune_epochs, "limit": finetune_limit} if finetune_epochs else None}
    _lowrank_report(f"SVD decomposition ({scheme})", net, bundle, small, acc=acc, test_limit=test_limit, out=Path(out),
                    record=record, t0=t0, threads=threads)


# ---------------------------------------------------------------------------------------------- bench
@app.command()
def bench(model: str = typer.Argument(..., help="saved model stem"), baseline: Optional[str] = typer.Option(None, help="dense model stem to compare against"),
          data: str = DATA, root: Optional[str] = ROOT, repeats: int = typer.Option(30, help="timed rounds per model and batch size"),
          backends: str = typer.Option("eager,onnxruntime", help="comma-separated: eager, onnxruntime"),
          threads: int = typer.Option(1, help="CPU threads for PyTorch and onnxruntime"),
          out: str = typer.Option("runs/bench/record.json", help="JSON record path")):
    """Measure MACs, params, accuracy and CPU latency in PyTorch eager and onnxruntime (dense and pruned interleaved)."""
    t0 = time.time()
    _check_out(out, folder=False)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(model, data, root)
    base = _load_model(baseline) if baseline else None
    if base is not None:
        _check_fit(base, bundle, baseline)
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    result = _measure(net, bundle, baseline=base, repeats=repeats, backends=names, threads=threads)
    threads = result["threads"]
    rows = [("accuracy", f"{result['accuracy']:.2f}%"), ("MACs", _fmt_m(result["macs"])), ("params", _fmt_m(result["params"]))]
    if base is not None:
        rows.append(("MAC reduction", f"{1 / result['macs_kept']:.2f}×"))
    for b, entry in (result.get("backends") or {names[0]: {"latency": result["latency"], "speedup": result.get("speedup")}}).items():
        if "error" in entry:
            rows.append((b, entry["error"]))
            continue
        for bs, lat in entry["latency"].items():
            x = (entry.get("speedup") or {}).get(bs)
            rows.append((f"{b} bs={bs}", _latency(lat, threads) + (f", {_speed(x)}" if x else "")))
    console.print(_kv_table(f"bench {model} (medians of {repeats} interleaved rounds)", rows, ("", "")))
    write_record(Path(out), {"command": "bench", "model": model, "baseline": baseline, "data": data, **result,
                             "wall_seconds": time.time() - t0})
    console.print(f"wrote {out}")


# --------------------------------------------------------------------------------------------- export
@app.command()
def export(model: str = typer.Argument(..., help="saved model stem"), format: str = typer.Option("onnx", help="onnx (the only format)"),
           out: Optional[str] = typer.Option(None, help="output file (default: the model stem + .onnx)"),
           data: str = typer.Option("fashion_mnist", help="data set for the input shape and the real-image check"),
           root: Optional[str] = ROOT, exporter: str = typer.Option("auto", help="auto | torchscript | dynamo"),
           opset: Optional[int] = typer.Option(None, help="ONNX opset version (default: the exporter's)")):
    """Export a saved model to ONNX (dynamic batch), checked in onnxruntime against PyTorch on random and real images."""
    from .errors import ConfigError
    from .onnx_export import export as _export

    if format != "onnx":
        raise ConfigError(f"unknown export format {format!r}; the only format is onnx.")
    net, bundle = _model_and_data(model, data, root)
    res = _export(net, out or f"{model}.onnx", bundle.example_inputs(1), data=bundle, exporter=exporter, opset=opset)
    console.print(_kv_table(f"ONNX export of {model}", [
        ("file", f"{res.path} ({res.bytes / 1e6:.2f} MB, opset {res.opset}, {res.exporter} exporter, dynamic batch)"),
        ("max |onnx − torch|, random", f"{res.max_abs_error:.2e} (batches {', '.join(map(str, res.checked_batches))})"),
        ("max |onnx − torch|, real", f"{res.max_abs_error_real:.2e} ({res.real_images} test images)"),
        ("tolerance", f"{res.tolerance:.2e} (1e-4 × max(1, max |logit|))")], ("", "")))


# --------------------------------------------------------------------------------------------- report
def _write_report(out: Path, model, dense, bundle, record: dict) -> Path:
    from .report import render_report

    path = render_report(out / "report.html", model=model, dense=dense, data=bundle, record=record)
    console.print(f"wrote {path}")
    return path


@app.command()
def report(run_dir: str = typer.Argument(..., help="a run folder: model.json/.safetensors and record.json (prune, decompose, ...)"),
           baseline: Optional[str] = typer.Option(None, help="dense model stem (default: the record's source)"),
           data: Optional[str] = typer.Option(None, help="data set (default: the record's)"), root: Optional[str] = ROOT,
           out: Optional[str] = typer.Option(None, help="HTML file (default: RUN_DIR/report.html)")):
    """One self-contained HTML page of a run: widths before/after, effective filters, accuracy, MACs, latency, checks, config."""
    from .errors import LoadError
    from .report import render_report

    folder = Path(run_dir)
    record_path = folder / "record.json"
    if not record_path.exists():
        raise LoadError(f"no record.json in {run_dir!r}; pass a folder written by chanprune prune/decompose/trp/partition.")
    record = json.loads(record_path.read_text())
    source = baseline or record.get("source") or (record.get("model") if isinstance(record.get("model"), str) and "/" in record["model"] else None)
    data_name = data or record.get("data") or "fashion_mnist"
    net, bundle = _model_and_data(str(folder / "model"), data_name, root)
    dense = _load_model(source) if source else None
    path = render_report(Path(out) if out else folder / "report.html", model=net, dense=dense, data=bundle, record=record)
    console.print(f"wrote {path}" + ("" if dense is not None else " (no dense model: pass --baseline for the analysis and latency)"))


# ----------------------------------------------------------------------------------------------- demo
@app.command()
def demo(checkpoint: str = typer.Option(str(DEFAULT_CHECKPOINT), help="saved model stem"), data: str = DATA,
         target_macs: float = typer.Option(0.5, help="fraction of MACs to keep"),
         method: str = typer.Option("hierarchical", help="one of: " + ", ".join(_method_names())),
         finetune_limit: int = typer.Option(2000, help="images for the one short fine-tune epoch"),
         test_limit: int = typer.Option(1000, help="size of the fixed stratified test subset used for accuracy"),
         threads: Optional[int] = THREADS, out: str = typer.Option("runs/demo", help="output folder")):
    """The main job: prune the shipped ResNet-56 (Fashion-MNIST) to 50% of its MACs, refit the consumers and re-estimate
    BatchNorm from calibration images, fine-tune briefly, report."""
    import chanprune
    from .analysis import AnalysisConfig

    t0 = time.time()
    _check_out(out, folder=True)
    threads = _set_threads(threads)
    net, bundle = _model_and_data(checkpoint, data, None)
    safe = chanprune.analyze(net, bundle, AnalysisConfig(calibration=256))  # the default reading: the no-fine-tune knee
    console.print(f"analysis ({safe.config.reading} reading, energy {safe.config.threshold}, N={safe.samples}): "
                  f"about {safe.max_compression_macs:.1%} of the MACs can go before accuracy drops without fine-tuning")
    extra = {"allow_exceed": True} if method == "hierarchical" else {}
    cfg = method_config(method, target_macs=target_macs, calibration=512 if method == "hierarchical" else None,
                        recover="compensate+bn", **extra)
    pruned, full = run_prune(net, bundle, cfg, finetune_epochs=1, finetune_limit=finetune_limit, out=Path(out), label=f"{method} → {target_macs:.0%} MACs", test_limit=test_limit,
                             source=checkpoint, threads=threads)
    analysis = full["record"].get("analysis")
    if analysis:
        console.print(f"layer budgets: every group kept at or above its effective filters ({analysis['reading']} reading, "
                      f"{analysis['rule']} {analysis['threshold']}, N={analysis['samples']}), which allow removing "
                      f"{analysis['max_compression_macs']:.1%} of the MACs"
                      + ("; the target goes beyond that (allow_exceed)" if 1 - target_macs > analysis["max_compression_macs"] else ""))
    report = _write_report(Path(out), pruned, net, bundle, full)
    console.print(f"total wall time {time.time() - t0:.0f} s; the report: {report.resolve()}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr ("warning: …"), not Python's file:line form with the source echoed."""
    Console(stderr=True).print(f"[yellow]warning:[/yellow] {cli_terms(str(message))}", highlight=False, soft_wrap=True)


def main() -> None:
    import warnings

    from .errors import ChanpruneError

    from . import distributed

    try:
        if distributed.init_from_env():  # under torchrun: join the group; only rank 0 prints
            console.quiet = not distributed.is_main()
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            app(standalone_mode=True)
    except ChanpruneError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        if distributed.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    main()
