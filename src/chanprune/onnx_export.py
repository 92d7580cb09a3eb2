"""ONNX export of any model chanprune produces, checked in onnxruntime before it is written.

``export(model, path, example_inputs)`` traces the model with ``torch.onnx.export`` (dynamic batch
dimension), runs the graph in onnxruntime on random inputs at two batch sizes and, when ``data`` is
given, on real test images, and compares the outputs with PyTorch's. The file appears at ``path`` only
when the check passes (written to a temporary file, then renamed), so a failed export never leaves a
broken or half-written model behind.

Tolerance: ``max |y_onnx − y_torch| ≤ rtol · max(1, max |y_torch|)`` with ``rtol = 1e-4`` — float32
kernels sum in different orders (and the exporter folds BatchNorm into the convs), so the outputs agree
to a few units in the last places, scaled by the size of the logits.

Exporter (``exporter="auto"``): the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``)
first, then the dynamo one (``torch.export`` + onnxscript) if it fails. On torch 2.13 both give matching
graphs for the zoo (max error ~1e-6); the TorchScript one is 5–10× faster to run (≈0.5 s instead of ≈5 s
per model), while the dynamo one translates more operators (FFTs, adaptive pooling to a larger size).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._atomic import atomic_path
from .errors import ConfigError, ExportError

__all__ = ["export", "ExportResult", "onnx_session", "EXPORTERS", "RTOL"]

EXPORTERS = ("auto", "torchscript", "dynamo")
RTOL = 1e-4
INPUT_NAME = "input"


@dataclass
class ExportResult:
    """What :func:`export` wrote and how closely onnxruntime matched PyTorch."""

    path: str
    exporter: str
    opset: int
    bytes: int
    max_abs_error: float                 # random inputs, batch sizes in ``checked_batches``
    max_abs_error_real: float | None     # real test images (None without data)
    tolerance: float                     # the bound both errors were held to
    checked_batches: list[int] = field(default_factory=list)
    real_images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ConfigError("example_inputs must be a tensor (or a tuple of tensors) shaped like one batch, e.g. torch.zeros(1, 3, 32, 32).")


def onnx_session(path: str | Path, threads: int | None = 1):
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads; None: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _outputs(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in y):
        return list(y)
    raise ExportError(f"the model returns a {type(y).__name__}, which ONNX cannot represent; return a tensor (or a tuple of tensors).")


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


@contextlib.contextmanager
def _silenced():
    """Discard what the exporters print, from Python and from C++ (the TorchScript exporter dumps its IR graph
    through its C++ logger on every failure): stdout and stderr are pointed at /dev/null at the descriptor level."""
    sink = io.StringIO()
    saved = []
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(null.fileno(), fd)
            with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                warnings.simplefilter("ignore")
                yield
    finally:
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)


def _trace(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, exporter: str, opset: int | None,
           n_outputs: int) -> None:
    input_names = [INPUT_NAME] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    output_names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    kwargs: dict[str, Any] = {"input_names": input_names, "output_names": output_names}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    if exporter == "torchscript":
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in input_names + output_names}
        kwargs["do_constant_folding"] = True
    else:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
        kwargs["verbose"] = False
    try:
        # the exporters print graphs and progress lines; a refusal is our one sentence instead
        with _silenced():
            torch.onnx.export(model, inputs, str(path), dynamo=(exporter == "dynamo"), **kwargs)
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise ExportError(f"the model does not export to ONNX: {_first_line(exc)}; replace that operation in the "
                          "model's forward or register a custom ONNX symbolic for it.") from None
    except Exception as exc:  # any other tracing failure: name it (and the operator, when the exporter says) in one sentence
        op = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", str(exc))
        if op:
            raise ExportError(f"the model does not export to ONNX: operator {op.group(1)!r} has no ONNX translation; "
                              "replace that operation in the model's forward.") from None
        raise ExportError(f"torch.onnx ({exporter} exporter) could not export the model ({type(exc).__name__}: "
                          f"{_first_line(exc)}).") from None


def _trace_any(model, inputs, path: Path, exporter: str, opset: int | None, n_outputs: int) -> str:
    """Trace with ``exporter``; ``"auto"`` tries the TorchScript exporter, then the dynamo one. Returns the one used."""
    if exporter != "auto":
        _trace(model, inputs, path, exporter, opset, n_outputs)
        return exporter
    try:
        _trace(model, inputs, path, "torchscript", opset, n_outputs)
        return "torchscript"
    except ExportError as first:
        try:
            _trace(model, inputs, path, "dynamo", opset, n_outputs)
            return "dynamo"
        except ExportError:
            raise first from None


def _compare(session, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(max |onnx − torch|, max |torch|) over every output."""
    with torch.inference_mode():
        ref = _outputs(model(*inputs))
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)
    err = max(float(np.max(np.abs(g - r.numpy()))) if r.numel() else 0.0 for g, r in zip(got, ref))
    scale = max(float(r.abs().max()) if r.numel() else 0.0 for r in ref)
    return err, scale


def _with_batch(inputs: tuple[torch.Tensor, ...], batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn((batch, *t.shape[1:]), generator=gen, dtype=t.dtype) if t.is_floating_point()
                 else t[:1].expand(batch, *t.shape[1:]).clone() for t in inputs)


def _real_inputs(data: Any, n: int) -> torch.Tensor | None:
    """The first ``n`` test images of a DataBundle (normalised), or the first ``n`` rows of a tensor."""
    if data is None or n <= 0:
        return None
    if isinstance(data, torch.Tensor):
        return data[:n].detach().cpu().float()
    if hasattr(data, "loader"):  # a DataBundle: its first n test images, normalised as in evaluation
        return next(iter(data.loader("test", batch_size=n, limit=n)))[0][:n]
    raise ConfigError(f"data must be a DataBundle (chanprune.load_data) or a tensor of images, not {type(data).__name__}.")


def export(model: nn.Module, path: str | Path, example_inputs: Any, *, data: Any = None, real_images: int = 64,
           exporter: str = "auto", opset: int | None = None, check_batches: Sequence[int] = (1, 5),
           rtol: float = RTOL, seed: int = 0) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch dimension, checked in onnxruntime.

    ``example_inputs``: one batch (a tensor, or a tuple of tensors) fixing every dimension but the batch.
    ``data``: a DataBundle (or a tensor of images) whose first ``real_images`` test images are also compared.
    The check runs random inputs at each size in ``check_batches`` (so the dynamic batch is exercised)
    and fails with :class:`ExportError` when an output differs by more than
    ``rtol · max(1, max |y_torch|)``; then nothing is written. The model itself is not changed.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export() needs a torch.nn.Module, got {type(model).__name__}.")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}.")
    if not check_batches or min(int(b) for b in check_batches) < 1:
        raise ConfigError(f"check_batches must be positive batch sizes, got {tuple(check_batches)}; pass e.g. (1, 5).")
    t0 = time.perf_counter()
    inputs = tuple(t.detach().cpu() for t in _as_tuple(example_inputs))
    net = copy.deepcopy(model).cpu().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        n_outputs = len(_outputs(net(*inputs)))
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    with atomic_path(path) as tmp:
        exporter = _trace_any(net, inputs, tmp, exporter, opset, n_outputs)
        try:
            session = onnx_session(tmp)
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load the exported graph ({_first_line(exc)}); "
                              "try another opset or exporter.") from None
        err, scale = 0.0, 0.0
        for bs in check_batches:
            e, s = _compare(session, net, _with_batch(inputs, int(bs), gen))
            err, scale = max(err, e), max(scale, s)
        err_real, n_real = None, 0
        real = _real_inputs(data, real_images)
        if real is not None and len(real):
            if len(inputs) != 1:
                raise ConfigError("real images can only be checked for a model with one input; pass data=None.")
            err_real, s = _compare(session, net, (real,))
            scale, n_real = max(scale, s), len(real)
        tolerance = rtol * max(1.0, scale)
        worst = max(err, err_real or 0.0)
        if not np.isfinite(worst) or worst > tolerance:
            raise ExportError(f"onnxruntime's outputs differ from PyTorch's by {worst:.3g}, above the tolerance "
                              f"{tolerance:.3g} (exporter {exporter!r}); the graph was not written — look for Python "
                              "control flow on tensor values or shapes in the model's forward.")
        import onnx

        opset_used = max((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                          if o.domain in ("", "ai.onnx")), default=0)
        size = tmp.stat().st_size
    return ExportResult(str(path), exporter, int(opset_used), int(size), err, err_real, tolerance,
                        [int(b) for b in check_batches], n_real, time.perf_counter() - t0)
