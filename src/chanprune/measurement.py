"""Measured cost of a model: MACs, parameters, accuracy and CPU latency.

* MACs/params come from ``torch_pruning.utils.count_ops_and_params`` (it counts multiply-
  accumulates, not FLOPs; per sample, since it averages over the batch; a conv's bias adds
  ``out_channels*H*W``).
* Latency is always measured on CPU under ``torch.inference_mode`` in eval mode, on copies of
  the models, and *interleaved*: each round times every model once per batch size, with the
  model order rotated every round, so slow drifts of the machine (thermal, other processes)
  hit all models alike. Reported numbers are medians (and p10/p90) over rounds, in ms.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .device import model_device
from .engine.evaluate import evaluate, preserve_mode
from .errors import ConfigError

__all__ = ["count_macs_params", "latency", "measure"]


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(MACs per sample, parameter count)`` of ``model`` on ``example_input``.

    The model is not changed (torch-pruning works on a deep copy) and every module's train/eval
    flag is as before. The input is moved to the model's device.
    """
    dev = model_device(model)
    if isinstance(example_input, torch.Tensor):
        example_input = example_input.to(dev)
    with preserve_mode(model):
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(round(float(macs))), int(params)


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


def latency(models: dict[str, nn.Module], input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32),
            repeats: int = 30, warmup: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Interleaved CPU latency of several models.

    ``input_shape`` is the shape of *one* sample, without the batch dimension (e.g. ``(3, 32, 32)``).
    Each of ``repeats`` rounds times every model once per batch size; the model order rotates by
    one each round. ``threads`` sets ``torch.set_num_threads`` for the measurement (restored after).

    Returns ``{name: {bs: {"median_ms", "p10_ms", "p90_ms"}}, "speedup": {name: {bs: x}}}``
    where the reference is the model named ``"dense"`` if present, else the first one, and
    ``speedup`` (reference median / model median) lists every other model.
    """
    if not models:
        raise ConfigError("latency() got no models; pass a dict such as {'dense': model}.")
    if "speedup" in models:
        raise ConfigError("a model may not be named 'speedup' (that key holds the speed-ups); rename it.")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup}); pass valid counts.")
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch_sizes must be positive integers, got {batch_sizes}; pass e.g. (1, 32).")
    shape = tuple(int(s) for s in input_shape)
    names = list(models)
    copies = {name: _cpu_eval_copy(m) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    inputs = {bs: torch.randn((bs, *shape), generator=gen) for bs in batch_sizes}
    times: dict[str, dict[int, list[float]]] = {n: {bs: [] for bs in batch_sizes} for n in names}

    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}; pass None to keep torch's setting.")
        torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for bs in batch_sizes:
                for name in names:
                    for _ in range(warmup):
                        copies[name](inputs[bs])
            for r in range(repeats):
                k = r % len(names)
                order = names[k:] + names[:k]
                for bs in batch_sizes:
                    x = inputs[bs]
                    for name in order:
                        t0 = time.perf_counter()
                        copies[name](x)
                        times[name][bs].append((time.perf_counter() - t0) * 1e3)
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)

    out: dict[str, Any] = {}
    for name in names:
        out[name] = {}
        for bs in batch_sizes:
            a = np.asarray(times[name][bs])
            out[name][bs] = {
                "median_ms": float(np.median(a)),
                "p10_ms": float(np.percentile(a, 10)),
                "p90_ms": float(np.percentile(a, 90)),
            }
    ref = "dense" if "dense" in models else names[0]
    out["speedup"] = {
        name: {bs: out[ref][bs]["median_ms"] / out[name][bs]["median_ms"] for bs in batch_sizes}
        for name in names if name != ref
    }
    return out


def measure(model: nn.Module, data: Any, *, baseline: nn.Module | None = None,
            batch_sizes: Sequence[int] = (1, 32), repeats: int = 30, accuracy: bool = True,
            limit: int | None = None) -> dict[str, Any]:
    """MACs, params, test accuracy and CPU latency of ``model`` (optionally against ``baseline``).

    Returns ``{"macs", "params", "accuracy" (test %, or None with accuracy=False),
    "latency_ms": {bs: median}, "latency": full latency() entry}`` and, with a baseline,
    ``"speedup": {bs: baseline median / model median}``, ``"mac_ratio"`` and ``"param_ratio"``
    (model / baseline, i.e. the fraction kept) and ``"baseline": {"macs", "params",
    "latency_ms"}``. Baseline and model are timed interleaved in one run. ``limit`` caps the
    test samples used for accuracy.
    """
    example = data.example_input(1)
    macs, params = count_macs_params(model, example)
    result: dict[str, Any] = {"macs": macs, "params": params}
    result["accuracy"] = evaluate(model, data, split="test", limit=limit)["accuracy"] if accuracy else None

    shape = tuple(example.shape[1:])
    timed = {"baseline": baseline, "model": model} if baseline is not None else {"model": model}
    lat = latency(timed, shape, batch_sizes=batch_sizes, repeats=repeats)
    result["latency_ms"] = {bs: v["median_ms"] for bs, v in lat["model"].items()}
    result["latency"] = lat["model"]
    if baseline is not None:
        bmacs, bparams = count_macs_params(baseline, example)
        result["speedup"] = dict(lat["speedup"]["model"])
        result["mac_ratio"] = macs / bmacs if bmacs else float("nan")
        result["param_ratio"] = params / bparams if bparams else float("nan")
        result["baseline"] = {"macs": bmacs, "params": bparams,
                              "latency_ms": {bs: v["median_ms"] for bs, v in lat["baseline"].items()}}
    return result
