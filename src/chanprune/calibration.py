"""Calibration images for every data-driven step: one reader of the forms ``data=`` may take.

``prune(..., data=...)`` and ``analyze(model, data)`` accept the same three forms — a DataBundle
(``chanprune.load_data``; images drawn from its training split by a seeded stratified draw), an
``(images, labels)`` pair, or a list of such batches — and both turn them into batches here.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def as_batches(data, n: int, batch_size: int, seed: int) -> Batches | None:
    """The first ``n`` calibration images of ``data`` in batches of ``batch_size`` (None for no data).

    A list of batches is taken as given (its size is the caller's choice).
    """
    if data is None:
        return None
    if hasattr(data, "calibration"):
        x, y = data.calibration(n, seed=seed)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data[0][:n], data[1][:n]
    elif isinstance(data, (list, tuple)):
        return list(data)
    else:
        raise ConfigError("data must be a chanprune DataBundle (chanprune.load_data), an (images, labels) pair, or a list of such batches.")
    if len(x) == 0:
        raise ConfigError("the calibration set is empty; pass at least one image (calibration=N with N >= 1).")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def example_input(data, example_inputs: torch.Tensor | None) -> torch.Tensor:
    """The one-image input the model is traced on: ``example_inputs`` if given, else one from the bundle."""
    if example_inputs is not None:
        return example_inputs
    if data is not None and hasattr(data, "example_input"):
        return data.example_input(1)
    raise ConfigError("pass data=... (a DataBundle) or example_inputs=... so the model can be traced.")
