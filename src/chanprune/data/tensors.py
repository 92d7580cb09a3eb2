"""Your own data as a :class:`DataBundle`: ``from_tensors(train=(x, y), test=(x, y))`` or ``from_loader(loader)``.

Images are N×C×H×W (N×H×W gets a channel axis), either

* **uint8 pixels** 0–255: normalised per batch as ``(x / 255 - mean) / std``, with ``mean``/``std`` (in
  [0, 1] pixel units) computed from the training images unless given; or
* **floats**: used exactly as given when ``mean``/``std`` are omitted (images you already normalised), else
  normalised as ``(x - mean) / std`` in the images' own units.

Every pruning method, recovery, analysis and ``evaluate``/``finetune`` takes the result like a registered
data set; calibration images are drawn from its training split.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from chanprune.errors import DataError

from .base import DataBundle, ImageSet, channel_stats, one_class_warning

__all__ = ["from_tensors", "from_loader"]

Pair = tuple[Any, Any]


def _image_set(pair: Pair | None, split: str) -> ImageSet | None:
    if pair is None:
        return None
    if isinstance(pair, ImageSet):
        return pair
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"{split}= must be an (images, labels) pair, got {type(pair).__name__}; "
                        f"pass {split}=(images, labels).")
    images, labels = (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for v in pair)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{split}= must hold two tensors (or numpy arrays), got "
                        f"({type(images).__name__}, {type(labels).__name__}).")
    if images.dim() == 3:  # N×H×W: one channel
        images = images.unsqueeze(1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise DataError(f"{split} labels must be class indices 0..K-1, got non-integer values; "
                            "pass integer labels (one-hot labels: labels.argmax(1)).")
        labels = labels.to(torch.int64)
    return ImageSet(images.detach().cpu(), labels.detach().cpu())


def _per_channel(name: str, value, channels: int) -> tuple[float, ...]:
    values = [float(v) for v in (value if isinstance(value, (Sequence, np.ndarray, torch.Tensor)) else [value])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise DataError(f"{name} needs one value per channel ({channels}), got {len(values)}.")
    if name == "std" and min(values) <= 0:
        raise DataError(f"std must be positive, got {values}.")
    return tuple(values)


def from_tensors(train: Pair, test: Pair | None = None, *, mean=None, std=None, num_classes: int | None = None,
                 classes: Sequence[str] | None = None, name: str = "tensors", hflip: bool = False,
                 crop_padding: int = 0) -> DataBundle:
    """A :class:`DataBundle` from ``(images, labels)`` tensors or numpy arrays.

    ``train``/``test``: ``(images N×C×H×W or N×H×W, labels N)``; ``test`` may be omitted (nothing to evaluate
    on then). ``mean``/``std``: a number or one per channel (see the module docstring for the units); uint8
    images default to the training images' statistics, float images to no normalisation.
    ``num_classes`` defaults to ``len(classes)`` or the largest label + 1. ``hflip``/``crop_padding``:
    training augmentation (off by default).
    """
    tr = _image_set(train, "train")
    if tr is None or len(tr) == 0:
        raise DataError("from_tensors needs at least one training image; pass train=(images, labels).")
    te = _image_set(test, "test")
    if te is None:
        te = ImageSet(tr.images[:0], tr.labels[:0])
    _, c, h, w = tr.images.shape
    if (mean is None) != (std is None):
        raise DataError("pass mean= and std= together (or neither).")
    if mean is None:
        if tr.images.dtype == torch.uint8:
            mean, std = channel_stats(tr.images)
        else:
            mean, std = (0.0,) * c, (1.0,) * c
    mean, std = _per_channel("mean", mean, c), _per_channel("std", std, c)
    top = max(int(tr.labels.max()), int(te.labels.max()) if len(te) else 0)
    if num_classes is None:
        num_classes = len(classes) if classes is not None else top + 1
    names = list(classes) if classes is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"classes names {len(names)} classes but num_classes is {num_classes}; make them agree.")
    kind = "uint8 pixels" if tr.images.dtype == torch.uint8 else "float images"
    bundle = DataBundle(name=name, train=tr, test=te, num_classes=int(num_classes), in_channels=int(c),
                        image_size=(int(h), int(w)), mean=mean, std=std, classes=names, hflip=bool(hflip),
                        crop_padding=int(crop_padding), source=f"tensors ({kind})")
    message = one_class_warning(bundle)
    if message:
        warnings.warn(message, stacklevel=2)
    return bundle


def _collect(loader: Iterable, split: str) -> Pair:
    xs, ys = [], []
    for batch in loader:
        if isinstance(batch, dict):
            batch = (batch.get("image", batch.get("images")), batch.get("label", batch.get("labels")))
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"the {split} loader must yield (images, labels) batches, got {type(batch).__name__}; "
                            "wrap the data set so __getitem__ returns (image, label).")
        x, y = batch[0], batch[1]
        xs.append(torch.as_tensor(x).detach().cpu())
        ys.append(torch.as_tensor(y).detach().cpu().reshape(-1))
    if not xs:
        raise DataError(f"the {split} loader yielded no batches; check its data set and drop_last.")
    return torch.cat(xs), torch.cat(ys)


def from_loader(train: Iterable, test: Iterable | None = None, **kwargs) -> DataBundle:
    """:func:`from_tensors` on everything a ``torch.utils.data.DataLoader`` (or any iterable of
    ``(images, labels)`` batches) yields, read once into memory. Keyword arguments as for :func:`from_tensors`.

    Take the images *before* random augmentation (chanprune draws calibration images and evaluates from the
    stored ones); a shuffling loader is fine.
    """
    return from_tensors(_collect(train, "train"), _collect(test, "test") if test is not None else None, **kwargs)
