"""Evaluation and BatchNorm recalibration, on the device the model is on unless told otherwise."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..device import model_device, resolve_device
from ..errors import ConfigError
from ..modes import preserve_mode

__all__ = ["resolve_device", "evaluate", "recalibrate_bn", "is_bundle", "preserve_mode", "accum_dtype"]


def accum_dtype(dev: torch.device) -> torch.dtype:
    """float64 for running sums, except on MPS which has no float64."""
    return torch.float32 if dev.type == "mps" else torch.float64


def is_bundle(obj: Any) -> bool:
    """True for a DataBundle-like object (has a callable ``loader``)."""
    return callable(getattr(obj, "loader", None))


@contextlib.contextmanager
def _on_device(model: nn.Module, dev: torch.device) -> Iterator[None]:
    """Move ``model`` to ``dev`` for the block and back to where it was afterwards."""
    before = model_device(model)
    moved = before != dev
    if moved:
        model.to(dev)
    try:
        yield
    finally:
        if moved:
            model.to(before)


def _batches(data_or_loader: Any, split: str, batch_size: int, limit: int | None,
             seed: int = 0, shuffle: bool = False) -> Iterable:
    if is_bundle(data_or_loader):
        return data_or_loader.loader(split, batch_size=batch_size, shuffle=shuffle, augment=False,
                                     seed=seed, limit=limit)
    return data_or_loader


def evaluate(model: nn.Module, data_or_loader: Any, split: str = "test", batch_size: int = 512,
             limit: int | None = None, device: str | torch.device | None = None) -> dict[str, float | int]:
    """Top-1 accuracy (percent), mean cross-entropy and sample count on a split.

    ``data_or_loader`` is a DataBundle (then ``split``/``batch_size``/``limit`` choose the
    loader; ``limit`` is the bundle's stratified subset) or any iterable of ``(x, y)`` batches
    (then ``limit`` truncates after that many samples). The model runs in eval mode under
    ``no_grad`` on ``device`` (default: where the model is); its per-module train/eval flags and its device
    are restored. Under torchrun the ranks take turns over a bundle's batches, so every rank must call it.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}; pass a positive batch size.")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be None or at least 1, got {limit}; pass None to use the whole split.")
    dev = resolve_device(device, model)
    bundle = is_bundle(data_or_loader)
    if bundle:
        from ..data.fit import check_fit

        check_fit(model, data_or_loader, split)
        if hasattr(data_or_loader, "split") and len(data_or_loader.split(split)) == 0:
            raise ConfigError(f"data set {data_or_loader.name!r} has no {split} images; give them "
                              f"(chanprune.data.from_tensors(..., {split}=(images, labels))) or evaluate another split.")
    batches = _batches(data_or_loader, split, batch_size, limit)
    if bundle:
        from ..progress import track

        batches = track(batches, f"evaluate ({split})")
    loss_sum = torch.zeros((), dtype=accum_dtype(dev), device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    # under torchrun the ranks take turns over a bundle's batches and the sums are all-reduced below
    turn, turns = (distributed.rank(), distributed.world_size()) if bundle else (0, 1)
    with preserve_mode(model), _on_device(model, dev), torch.no_grad():
        model.eval()
        for bi, (x, y) in enumerate(batches):
            if bi % turns != turn:
                continue
            if not bundle and limit is not None and n + len(y) > limit:
                x, y = x[: limit - n], y[: limit - n]
            if len(y) == 0:
                break
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True).long()
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").to(loss_sum.dtype)
            correct += (out.argmax(dim=1) == y).sum()
            n += len(y)
            if not bundle and limit is not None and n >= limit:
                break
    if turns > 1:
        sums = torch.tensor([loss_sum.item(), float(correct.item()), float(n)], dtype=torch.float64, device="cpu")
        distributed.all_reduce_([sums])
        loss_sum, correct, n = sums[0], sums[1], int(sums[2])
    if n == 0:
        raise ConfigError(f"evaluation on the {split!r} split saw no samples; check the data set or the limit.")
    return {"accuracy": 100.0 * float(correct) / n, "loss": float(loss_sum) / n, "n": n}


def recalibrate_bn(model: nn.Module, data: Any, num_batches: int = 20, batch_size: int = 128,
                   *, seed: int = 0, split: str = "train", device: str | torch.device | None = None) -> int:
    """Re-estimate BatchNorm running statistics from data; returns the number of samples used.

    Every BatchNorm layer that tracks running stats is reset and then fed ``num_batches`` batches
    (un-augmented, shuffled with ``seed``) with ``momentum=None``, i.e. an exact cumulative
    average, on ``device`` (default: where the model is). Only the BatchNorm layers are put in train mode;
    everything else (dropout, ...)
    stays in eval mode so the statistics match what the network sees at test time. No gradients,
    no weight changes. Momenta, train/eval flags and the model's device are restored.

    ``data`` is a DataBundle or any iterable of ``(x, y)`` / ``x`` batches.
    """
    if num_batches < 1:
        raise ConfigError(f"num_batches must be at least 1, got {num_batches}; pass a positive count.")
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    dev = resolve_device(device, model)
    batches = _batches(data, split, batch_size, None, seed=seed, shuffle=True)
    momenta = [bn.momentum for bn in bns]
    n = 0
    try:
        with preserve_mode(model), _on_device(model, dev), torch.no_grad():
            model.eval()
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            for i, batch in enumerate(batches):
                if i >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(dev, non_blocking=True))
                n += len(x)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
    if n == 0:
        raise ConfigError("recalibrate_bn saw no batches, so the BatchNorm statistics are now reset; pass data with at least one batch.")
    return n
