"""Measured cost of a model: MACs, parameters, accuracy and CPU latency.

* MACs/params come from :func:`chanprune.cost.count_macs_params` (Torch-Pruning's counter: multiply-
  accumulates, not FLOPs, per sample).
* Latency is always measured on CPU under ``torch.inference_mode`` in eval mode, on copies of
  the models, and *interleaved*: each round times every model once per batch size, with the
  model order rotated every round, so slow drifts of the machine (thermal, other processes)
  hit all models alike. Reported numbers are medians (and p10/p90) over rounds, in ms.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed
from .cost import count_macs_params
from .device import model_device
from .engine.evaluate import evaluate
from .modes import preserve_mode
from .errors import ConfigError

__all__ = ["count_macs_params", "latency", "measure"]




def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    if model_device(model).type == "cpu":
        with preserve_mode(model):
            m = copy.deepcopy(model)
    else:
        m = copy.deepcopy(model).to("cpu")
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


BACKENDS = ("eager", "onnxruntime")


def _runners(copies: dict[str, nn.Module], shape: tuple[int, ...], backend: str, threads: int, folder: str) -> dict:
    """name → fn(x) running one forward pass of that model in ``backend`` (onnxruntime: exported, checked, loaded)."""
    if backend == "eager":
        return {name: m for name, m in copies.items()}
    from .onnx_export import INPUT_NAME, export, onnx_session

    runners = {}
    for i, (name, m) in enumerate(copies.items()):
        path = f"{folder}/{i}.onnx"
        export(m, path, torch.zeros((1, *shape)), check_batches=(2,))
        session = onnx_session(path, threads=threads)
        runners[name] = (lambda sess: (lambda x: sess.run(None, {INPUT_NAME: x.numpy()})))(session)
    return runners


def _summary(times: list[float]) -> dict[str, float]:
    a = np.asarray(times)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)), "p90_ms": float(np.percentile(a, 90))}


def latency(models: dict[str, nn.Module], input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32),
            repeats: int = 30, warmup: int = 5, threads: int | None = None,
            backend: str | Sequence[str] = "eager") -> dict[str, Any]:
    """Interleaved CPU latency of several models, in PyTorch eager and/or onnxruntime.

    ``input_shape`` is the shape of *one* sample, without the batch dimension (e.g. ``(3, 32, 32)``).
    Each of ``repeats`` rounds times every (model, backend) once per batch size; the order rotates by
    one each round. ``threads`` sets ``torch.set_num_threads`` for the measurement (restored after) and
    onnxruntime's intra-op threads (None: torch's current count for both).
    ``backend``: ``"eager"``, ``"onnxruntime"`` (the model exported to ONNX, checked against PyTorch,
    run on onnxruntime's CPU provider) or a sequence of both, timed interleaved in the same rounds.

    Returns, for one backend, ``{name: {bs: {"median_ms", "p10_ms", "p90_ms"}}, "speedup": {name: {bs: x}}}``
    where the reference is the model named ``"dense"`` if present, else the first one, and
    ``speedup`` (reference median / model median) lists every other model; for a sequence of
    backends, ``{backend: that dict}`` plus ``"threads"``.
    """
    if not models:
        raise ConfigError("latency() got no models; pass a dict such as {'dense': model}.")
    if "speedup" in models:
        raise ConfigError("a model may not be named 'speedup' (that key holds the speed-ups); rename it.")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup}); pass valid counts.")
    backends = (backend,) if isinstance(backend, str) else tuple(backend)
    if not backends or any(b not in BACKENDS for b in backends):
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)} (or a sequence of them), not {backend!r}.")
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch_sizes must be positive integers, got {batch_sizes}; pass e.g. (1, 32).")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}; pass None to keep torch's setting.")
    shape = tuple(int(s) for s in input_shape)
    names = list(models)
    copies = {name: _cpu_eval_copy(m) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    inputs = {bs: torch.randn((bs, *shape), generator=gen) for bs in batch_sizes}
    n_threads = int(threads) if threads is not None else torch.get_num_threads()
    keys = [(b, n) for b in backends for n in names]
    times: dict[tuple[str, str], dict[int, list[float]]] = {k: {bs: [] for bs in batch_sizes} for k in keys}

    old_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="chanprune-latency-") as folder, torch.inference_mode():
            run = {}
            for b in backends:
                for n, fn in _runners(copies, shape, b, n_threads, _mkdir(f"{folder}/{b}")).items():
                    run[(b, n)] = fn
            for bs in batch_sizes:
                for k in keys:
                    for _ in range(warmup):
                        run[k](inputs[bs])
            for r in range(repeats):
                j = r % len(keys)
                order = keys[j:] + keys[:j]
                for bs in batch_sizes:
                    x = inputs[bs]
                    for k in order:
                        t0 = time.perf_counter()
                        run[k](x)
                        times[k][bs].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)

    ref = "dense" if "dense" in models else names[0]
    per_backend: dict[str, Any] = {}
    for b in backends:
        out: dict[str, Any] = {name: {bs: _summary(times[(b, name)][bs]) for bs in batch_sizes} for name in names}
        out["speedup"] = {
            name: {bs: out[ref][bs]["median_ms"] / out[name][bs]["median_ms"] for bs in batch_sizes}
            for name in names if name != ref
        }
        per_backend[b] = out
    if isinstance(backend, str):
        return per_backend[backend]
    return {**per_backend, "threads": n_threads}


def _mkdir(path: str) -> str:
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def measure(model: nn.Module, data: Any, *, baseline: nn.Module | None = None,
            batch_sizes: Sequence[int] = (1, 32), repeats: int = 30, accuracy: bool = True,
            limit: int | None = None, backends: Sequence[str] = ("eager",), threads: int | None = None) -> dict[str, Any]:
    """MACs, params, test accuracy and CPU latency of ``model`` (optionally against ``baseline``).

    Returns ``{"macs", "params", "accuracy" (test %, or None with accuracy=False),
    "latency_ms": {bs: median}, "latency": full latency() entry}`` and, with a baseline,
    ``"speedup": {bs: baseline median / model median}``, ``"macs_kept"`` and ``"params_kept"``
    (model / baseline, i.e. the fraction kept) and ``"baseline": {"macs", "params",
    "latency_ms"}``. Baseline and model are timed interleaved in one run. ``limit`` caps the
    test samples used for accuracy. These top-level latencies are PyTorch eager's (the first of
    ``backends`` when eager is not among them); with several ``backends`` (e.g. ``("eager", "onnxruntime")``)
    ``"backends": {backend: {"latency_ms", "latency", "speedup", "baseline_latency_ms"}}`` holds each, all timed
    interleaved, and ``"threads"`` the thread count they ran with. A model onnxruntime cannot run (an operator
    that does not export) gets ``{"error": message}`` for that backend instead of a failure.
    """
    from .errors import ExportError

    example = data.example_inputs(1)
    macs, params = count_macs_params(model, example)
    result: dict[str, Any] = {"macs": macs, "params": params}
    result["accuracy"] = evaluate(model, data, split="test", limit=limit)["accuracy"] if accuracy else None

    shape = tuple(example.shape[1:])
    timed = {"baseline": baseline, "model": model} if baseline is not None else {"model": model}
    backends = tuple(backends)

    def timings() -> dict:
        try:
            out = latency(timed, shape, batch_sizes=batch_sizes, repeats=repeats, threads=threads, backend=backends)
        except ExportError as exc:
            if backends == ("eager",) or "eager" not in backends:
                raise
            out = latency(timed, shape, batch_sizes=batch_sizes, repeats=repeats, threads=threads, backend=("eager",))
            out.update({b: {"error": str(exc)} for b in backends if b != "eager"})
        return out

    # under torchrun rank 0 times alone (ranks timing at once would slow each other) and shares its numbers
    lat_all = distributed.broadcast_object(timings() if distributed.is_main() else None)
    result["threads"] = lat_all["threads"]
    first = "eager" if "eager" in backends else backends[0]
    lat = lat_all[first]
    result["latency_ms"] = {bs: v["median_ms"] for bs, v in lat["model"].items()}
    result["latency"] = lat["model"]
    if len(backends) > 1:
        result["backends"] = {}
        for b in backends:
            entry = lat_all[b]
            if "error" in entry:
                result["backends"][b] = entry
                continue
            result["backends"][b] = {"latency_ms": {bs: v["median_ms"] for bs, v in entry["model"].items()},
                                     "latency": entry["model"], "speedup": dict(entry["speedup"].get("model", {})),
                                     "baseline_latency_ms": {bs: v["median_ms"] for bs, v in entry["baseline"].items()}
                                     if baseline is not None else None}
    if baseline is not None:
        bmacs, bparams = count_macs_params(baseline, example)
        result["speedup"] = dict(lat["speedup"]["model"])
        result["macs_kept"] = macs / bmacs if bmacs else float("nan")
        result["params_kept"] = params / bparams if bparams else float("nan")
        result["baseline"] = {"macs": bmacs, "params": bparams,
                              "latency_ms": {bs: v["median_ms"] for bs, v in lat["baseline"].items()},
                              "latency": lat["baseline"]}
    return result


_COMPUTE_OPS = ("Conv", "FusedConv", "Gemm", "MatMul")


def _layer_name(node: str) -> str:
    """A profiled node's layer: '/layer1/layer1.0/relu1/Relu_output_0_nchwc_kernel_time' → 'layer1.0/relu1'."""
    name = node.removesuffix("_kernel_time").replace("_nchwc", "").replace("_output_0", "")
    parts = [p for p in name.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0] == parts[1].split(".")[0]:  # '/layer1/layer1.0/...': the scope repeats its parent
        parts = parts[1:]
    return "/".join(parts[:-1]) or name


def layer_profile(models: dict[str, nn.Module], input_shape: Sequence[int], batch: int = 32, runs: int = 10,
                  threads: int = 1) -> dict[str, Any]:
    """Where the time goes, layer by layer, in onnxruntime (its own profiler; medians over ``runs``).

    Each model is exported (checked) and run ``runs`` times at ``batch`` with profiling on; every graph node's
    kernel time is attributed to its layer (onnxruntime's fused Conv+ReLU nodes are named after the ReLU). Per
    model and layer: ``ms``, the op, the kernel's weight shape and the MACs it executed — which is where padding
    shows: onnxruntime runs a conv in the blocked NCHWc layout by padding its output channels up to the vector
    block (a 45-channel layer computes 48), then strips the padding again ("layout reorders").
    Conv/linear kernels are paired across the models by position (pruning keeps the topology); the other nodes
    (layout reorders, pooling, ...) are summed per op. Returns ``{"batch", "threads", "runs", "layers": [{"layer",
    "op", name: {"ms" (median), "min_ms", "weight", "executed_macs"}}], "total_ms": {name: ms}}``.
    """
    import json as _json

    import onnxruntime as ort

    from .onnx_export import INPUT_NAME, export

    shape = tuple(int(s) for s in input_shape)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).numpy()
    per_model: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="chanprune-profile-") as folder:
        for i, (name, model) in enumerate(models.items()):
            path = f"{folder}/{i}.onnx"
            export(_cpu_eval_copy(model), path, torch.zeros((1, *shape)), check_batches=(2,))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
            opts.enable_profiling = True
            opts.profile_file_prefix = f"{folder}/prof{i}"
            opts.log_severity_level = 3
            session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            session.run(None, {INPUT_NAME: x})  # warm-up (its events are dropped below)
            for _ in range(runs):
                session.run(None, {INPUT_NAME: x})
            events = [e for e in _json.load(open(session.end_profiling())) if e.get("cat") == "Node"]
            per_node: dict[str, list[float]] = {}
            info: dict[str, dict] = {}
            for e in events:
                per_node.setdefault(e["name"], []).append(e["dur"] / 1e3)
                info.setdefault(e["name"], e.get("args", {}))
            compute, other = [], {}
            for node, durs in per_node.items():  # insertion order = execution order of the first run
                args = info[node]
                op = args.get("op_name", "?")
                ms = float(np.median(durs[-runs:]))
                fastest = float(np.min(durs[-runs:]))  # the least disturbed run: robust where other processes preempt
                ins = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
                outs = [next(iter(t.values())) for t in args.get("output_type_shape", [])]
                if op in _COMPUTE_OPS and len(ins) >= 2 and outs:
                    # conv weight [out, in/groups, kh, kw]: each output element costs prod(weight[1:]) MACs;
                    # a linear layer's output element costs its input width
                    weight = ins[1] if op in ("Conv", "FusedConv") else [outs[0][-1], ins[0][-1]]
                    compute.append({"layer": _layer_name(node), "op": op, "ms": ms, "min_ms": fastest, "weight": weight,
                                    "executed_macs": int(np.prod(outs[0]) * np.prod(weight[1:])) // batch})
                else:
                    label = "layout reorders (NCHW ↔ NCHWc)" if op.startswith("Reorder") else op
                    other[label] = [a + b for a, b in zip(other.get(label, (0.0, 0.0)), (ms, fastest))]
            per_model[name] = {"compute": compute, "other": other}
    # the models share their topology: kernels pair by layer name, else (fusion can rename a node) by position
    first = next(iter(models))
    rows = []
    for i, ref in enumerate(per_model[first]["compute"]):
        row = {"layer": ref["layer"], "op": ref["op"]}
        for n in models:
            kernels = per_model[n]["compute"]
            row[n] = next((k for k in kernels if k["layer"] == ref["layer"]), kernels[i] if i < len(kernels) else None)
        rows.append(row)
    labels = list(dict.fromkeys(k for v in per_model.values() for k in v["other"]))
    rows += [{"layer": label, "op": label,
              **{n: {"ms": per_model[n]["other"].get(label, (0.0, 0.0))[0], "min_ms": per_model[n]["other"].get(label, (0.0, 0.0))[1],
                     "weight": None, "executed_macs": 0} for n in models}} for label in labels]
    return {"batch": batch, "threads": threads, "runs": runs, "layers": rows,
            "total_ms": {n: sum(r[n]["ms"] for r in rows) for n in models}}
