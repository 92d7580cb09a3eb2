"""Calibration images for every data-driven step: one reader of the forms ``data=`` may take.

``prune(..., data=...)``, ``analyze(model, data)`` and ``decompose`` accept the same three forms — a DataBundle
(``chanprune.load_data``, ``chanprune.data.from_tensors``; images from its training split), an ``(images, labels)``
pair of normalised tensors, or a list of such batches — and turn them into batches here. ``calibration`` is a
number of images (a seeded stratified subset of a bundle, the first N of a pair) or explicit indices into the
bundle's training split / the pair; the record names the images used.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import ConfigError

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def is_pair(data: Any) -> bool:
    """True for an ``(images, labels)`` pair of tensors (not a list of batches)."""
    return (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and isinstance(data[1], torch.Tensor) and data[0].dim() >= 2)


def calibration_batches(data: Any, calibration: int | Sequence[int], batch_size: int,
                        seed: int) -> tuple[Batches | None, dict | None]:
    """``(batches, record)``: the calibration images in batches of ``batch_size`` (None for no data), and a JSON
    record naming them (``source``, ``images``, and the ``indices`` they were taken at, where they have any).

    A list of batches is taken as given (its size is the caller's choice).
    """
    if data is None:
        return None, None
    count = calibration if isinstance(calibration, int) and not isinstance(calibration, bool) else None
    if hasattr(data, "calibration_indices"):
        idx = data.calibration_indices(calibration, seed=seed)
        x, y = data.calibration(idx)
        how = f"stratified subset, seed {seed}" if count is not None else "indices given"
        record = {"source": f"{data.name} train split ({how})", "images": len(idx), "indices": idx.tolist()}
    elif hasattr(data, "calibration") and count is not None:  # a bundle-like object without indices
        x, y = data.calibration(count, seed=seed)
        record = {"source": f"{type(data).__name__}.calibration({count}, seed={seed})", "images": len(x)}
    elif is_pair(data):
        images, labels = data
        if len(images) != len(labels):
            raise ConfigError(f"data=(images, labels) holds {len(images)} images but {len(labels)} labels; "
                              "pass one label per image.")
        idx = (torch.arange(min(count, len(images))) if count is not None
               else torch.as_tensor(list(calibration), dtype=torch.int64))
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(images)):
            raise ConfigError(f"calibration indices must lie in 0..{len(images) - 1} (the images passed as data).")
        x, y = images[idx], labels[idx]
        record = {"source": "the (images, labels) passed as data" + (", first N" if count is not None else ", indices given"),
                  "images": len(idx), "indices": idx.tolist()}
    elif isinstance(data, (list, tuple)):
        batches = list(data)
        return batches, {"source": "the batches passed as data", "images": sum(len(b[0]) for b in batches)}
    else:
        raise ConfigError("data must be a chanprune DataBundle (chanprune.load_data, chanprune.data.from_tensors), "
                          "an (images, labels) pair, or a list of such batches.")
    if len(x) == 0:
        raise ConfigError("the calibration set is empty; pass at least one image (calibration=N with N >= 1).")
    return [(x[i: i + batch_size], y[i: i + batch_size]) for i in range(0, len(x), batch_size)], record


def as_batches(data, n: int | Sequence[int], batch_size: int, seed: int) -> Batches | None:
    """The calibration batches of :func:`calibration_batches`, without the record."""
    return calibration_batches(data, n, batch_size, seed)[0]


def trace_inputs(data, example_inputs: torch.Tensor | None) -> torch.Tensor:
    """The one-image input the model is traced on: ``example_inputs`` if given, else zeros shaped like one image
    of ``data`` (a bundle, a pair, or a list of batches)."""
    if example_inputs is not None:
        return example_inputs
    if data is not None and hasattr(data, "example_inputs"):
        return data.example_inputs(1)
    if is_pair(data):
        return torch.zeros_like(data[0][:1], dtype=torch.float32)
    if isinstance(data, (list, tuple)) and data and is_pair(data[0]):
        return torch.zeros_like(data[0][0][:1], dtype=torch.float32)
    raise ConfigError("pass data=... (a DataBundle or (images, labels)) or example_inputs=... so the model can be traced.")
