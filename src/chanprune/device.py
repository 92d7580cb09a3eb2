"""Where a computation runs: the one place that turns a device name into a device and moves data to a model.

Every entry point (analyze, prune, decompose, trp_train, evaluate, measure, finetune, the CLI) runs on the
device the model is on and leaves the model there: inputs, calibration batches and the accumulators of the
statistics passes follow :func:`model_device`. Only a training run chooses a device itself
(``TrainConfig.device``, ``--device``), through :func:`resolve_device`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["resolve_device", "model_device", "to_device"]


def resolve_device(device: str | torch.device | None = "auto", model: nn.Module | None = None) -> torch.device:
    """``'auto'|'cpu'|'cuda[:N]'`` (or a torch.device) → a device that exists here.

    ``None`` means the device ``model`` is on. ``'auto'`` is, under torchrun with GPUs, the local rank's GPU; else the
    model's device when the model already sits on an accelerator; else CUDA when present; else the CPU.
    """
    if device is None:
        if model is None:
            raise ConfigError("resolve_device(None) needs the model whose device to use; pass model=... or a device name.")
        return model_device(model)
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        from .distributed import is_distributed, local_rank

        if torch.cuda.is_available() and is_distributed():  # one GPU per process: the local rank's
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        if model is not None and model_device(model).type != "cpu":
            return model_device(model)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {device!r} is not a device name; use 'auto', 'cpu' or 'cuda[:N]'.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0 … cuda:{torch.cuda.device_count() - 1}.")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer); the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(data: Any, device: torch.device | nn.Module) -> Any:
    """``data`` (a tensor, or tuples/lists/dicts of them, e.g. ``(x, y)`` batches) moved to ``device``
    (or to a model's device); anything else is returned as it is."""
    if isinstance(device, nn.Module):
        device = model_device(device)
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, tuple):
        return tuple(to_device(d, device) for d in data)
    if isinstance(data, list):
        return [to_device(d, device) for d in data]
    if isinstance(data, dict):
        return {k: to_device(v, device) for k, v in data.items()}
    return data
