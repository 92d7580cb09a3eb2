"""Core data types: :class:`ImageSet`, :class:`DataBundle` and the deterministic :class:`Loader`.

Images are kept as N×C×H×W tensors, either uint8 pixels (0–255; the registered data sets) or float32 values
(your own data through :func:`chanprune.data.from_tensors`); normalization and augmentation happen per batch:
``(x / unit - mean) / std`` with ``unit`` 255 for uint8 pixels and 1 for floats (:func:`pixel_unit`).
"""
from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chanprune._atomic import atomic_path
from chanprune.errors import ConfigError, DataError

__all__ = [
    "ImageSet",
    "DataBundle",
    "Loader",
    "stratified_quota",
    "stratified_split",
    "channel_stats",
    "pixel_unit",
    "make_bundle",
    "one_class_warning",
    "load_npz_cache",
    "save_npz_cache",
]

# Stream ids keep the per-epoch permutation and the per-batch augmentation draws independent.
_STREAM_PERMUTATION = 0
_STREAM_AUGMENT = 1


def _rng_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed that is a fixed function of (seed, epoch, index, stream); no collisions by construction."""
    entropy = [int(seed) % 2**64, int(epoch) % 2**64, int(index) % 2**64, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_rng_seed(seed, epoch, index, stream))
    return g


# --------------------------------------------------------------------------------------------
# Stratified selection helpers
# --------------------------------------------------------------------------------------------

def stratified_quota(counts: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """How many samples to take from each class so that ``n`` in total are as even as possible.

    Classes are filled round-robin in a seeded class order (classes that run out are skipped), so
    the quota for ``n`` is contained in the quota for ``n + 1``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(min(n, counts.sum()))
    if n <= 0 or counts.size == 0:
        return np.zeros_like(counts)
    # Largest number of full rounds r with sum(min(counts, r)) <= n.
    lo, hi = 0, int(counts.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(counts, lo)
    rest = n - int(quota.sum())
    if rest:
        order = np.random.default_rng(seed).permutation(counts.size)
        eligible = [k for k in order if counts[k] > lo]
        for k in eligible[:rest]:
            quota[k] += 1
    return quota


def _stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of a deterministic stratified subset of size ``min(n, len(labels))``."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = stratified_quota(counts, n, seed)
    rng = np.random.default_rng(seed)
    picked = []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        perm = rng.permutation(members.size)
        picked.append(members[perm[: quota[k]]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test): per class, ``round(n_c * test_fraction)`` go to test.

    One ``numpy.random.default_rng(seed)`` draws a permutation per class (classes in ascending
    order), then one permutation of the train indices and one of the test indices, so neither
    split is grouped by class. A class keeps at least one training sample.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(members.size)]
        n_test = min(int(round(members.size * test_fraction)), members.size - 1)
        n_test = max(n_test, 0)
        train.append(members[: members.size - n_test])
        test.append(members[members.size - n_test:])
    train_idx = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
    test_idx = np.concatenate(test) if test else np.zeros(0, dtype=np.int64)
    return train_idx[rng.permutation(train_idx.size)], test_idx[rng.permutation(test_idx.size)]


def channel_stats(images: torch.Tensor | np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images, in [0, 1] pixel units."""
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise DataError(f"channel_stats needs uint8 N×C×H×W images, got {arr.dtype} with shape {arr.shape}; convert the images to uint8 first.")
    channels = arr.shape[1]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, arr.shape[0], chunk):
        block = arr[start:start + chunk]
        for c in range(channels):
            hist[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(channels):
        total = hist[c].sum()
        if total == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((hist[c] * values).sum() / total)
        var = float((hist[c] * (values - mean) ** 2).sum() / total)
        std = math.sqrt(var)
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def pixel_unit(images: torch.Tensor) -> float:
    """What one unit of ``mean``/``std`` is in the stored values: 255 for uint8 pixels, 1 for float images."""
    return 255.0 if images.dtype == torch.uint8 else 1.0


def _images_error(images: torch.Tensor) -> str | None:
    """Why ``images`` cannot be stored (None when they can), with the fix that suits what was passed."""
    shape = tuple(images.shape)
    if images.dim() == 3:
        return (f"images of shape {shape} have no channel axis; add one with images.unsqueeze(1) "
                "(N×H×W → N×1×H×W).")
    if images.dim() != 4:
        return f"images must be N×C×H×W, got shape {shape}; reshape them to one image per row of the first axis."
    if images.dtype == torch.uint8 or images.is_floating_point():
        return None
    if images.dtype == torch.bool or images.is_complex():
        return f"images must be uint8 pixels or floats, got {images.dtype}; convert them with images.float()."
    lo, hi = (int(images.min()), int(images.max())) if images.numel() else (0, 0)
    if 0 <= lo and hi <= 255:
        return (f"images must be uint8 pixels or floats, got {images.dtype} with values {lo}..{hi}; they are pixels, "
                "so convert them with images.to(torch.uint8).")
    return (f"images must be uint8 pixels or floats, got {images.dtype} with values {lo}..{hi} (not 0..255 pixels); "
            "convert them with images.float() and pass mean= and std= to chanprune.data.from_tensors.")


# --------------------------------------------------------------------------------------------
# ImageSet
# --------------------------------------------------------------------------------------------

@dataclass
class ImageSet:
    """Images (N×C×H×W: uint8 pixels, or float32 values used as given) with their labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(np.ascontiguousarray(self.labels))
        problem = _images_error(self.images)
        if problem:
            raise DataError(problem)
        if self.images.is_floating_point() and self.images.dtype != torch.float32:
            self.images = self.images.to(torch.float32)
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"ImageSet has {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}; "
                "pass exactly one integer label per image."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int, seed: int = 0) -> "ImageSet":
        """A deterministic stratified subset of ``n`` samples (original order kept); ``n >= len`` returns self.

        Classes get ``n // K`` samples each plus one more for some (seeded), or all they have if
        fewer. Subsets with the same seed are nested: ``subset(m) ⊆ subset(n)`` for ``m <= n``.
        """
        n = int(n)
        if n < 1:
            raise ConfigError(f"subset size must be at least 1, got {n}; pass a positive number of samples.")
        if n >= len(self):
            return self
        idx = torch.from_numpy(_stratified_indices(self.labels.numpy(), n, seed))
        return ImageSet(self.images[idx], self.labels[idx])

    def class_counts(self, num_classes: int | None = None) -> list[int]:
        """Number of samples per label 0..num_classes-1."""
        k = num_classes if num_classes is not None else (int(self.labels.max()) + 1 if len(self) else 0)
        return torch.bincount(self.labels, minlength=k).tolist()


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------

def _normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # A fresh tensor with the standard strides. ``.contiguous()`` is not enough: it keeps the odd strides a permute
    # leaves on size-1 dims (one channel: (HW, 1, W, 1)), and with those oneDNN's convolution backward corrupts the
    # heap (glibc aborts: "corrupted size vs. prev_size"); see tests/data/test_data_loader.py.
    return images.to(torch.float32, memory_format=torch.contiguous_format, copy=True).mul_(scale).sub_(shift)


def _random_crop(x: torch.Tensor, padding: int, g: torch.Generator, rows: slice | None = None,
                 total: int | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to H×W at a random offset per sample.

    ``rows``/``total``: ``x`` holds only these rows of a batch of ``total`` (one process's share); offsets are
    drawn for the whole batch and those rows' used, so each sample is cropped as it is in the whole batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (total or n,), generator=g)
    ox = torch.randint(0, 2 * padding + 1, (total or n,), generator=g)
    if rows is not None:
        oy, ox = oy[rows], ox[rows]
    rows = oy[:, None] + torch.arange(h)  # n×h
    cols = ox[:, None] + torch.arange(w)  # n×w
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


def _random_hflip(x: torch.Tensor, g: torch.Generator, rows: slice | None = None, total: int | None = None) -> torch.Tensor:
    flip = torch.rand(total or x.shape[0], generator=g) < 0.5
    if rows is not None:
        flip = flip[rows]
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class Loader:
    """Re-iterable batches ``(x float32 normalized N×C×H×W, y int64 N)``.

    The order (when ``shuffle``) is a fixed function of ``(seed, epoch)``; the augmentation of
    batch ``b`` uses a ``torch.Generator`` seeded from ``(seed, epoch, b)``. So batch ``b`` is the
    same whatever batches were drawn before it, and a resumed run sees identical batches.
    Iteration starts at batch ``skip``; ``len()`` is the number of batches iteration yields.

    ``part=(rank, world)`` (see :meth:`shard`) yields only that process's contiguous share of every batch,
    sampled and augmented exactly as in the whole batch: the ``world`` shares of batch ``b`` concatenated in
    rank order are batch ``b`` (a DistributedSampler that keeps the global batch and its order).
    """

    def __init__(
        self,
        data: ImageSet,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        hflip: bool = False,
        crop_padding: int = 0,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
        drop_last: bool = False,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}; pass a positive batch size.")
        if int(skip) < 0:
            raise ConfigError(f"skip must be >= 0, got {skip}; pass the index of the first batch to yield.")
        if int(crop_padding) < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {crop_padding}.")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.hflip = bool(hflip)
        self.crop_padding = int(crop_padding)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.skip = int(skip)
        self.drop_last = bool(drop_last)
        self.part = (int(part[0]), int(part[1]))
        if not 0 <= self.part[0] < self.part[1]:
            raise ConfigError(f"part must be (rank, world) with 0 <= rank < world, got {part}.")
        channels = data.images.shape[1]
        mean_t = torch.tensor(list(mean), dtype=torch.float32).reshape(1, channels, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32).reshape(1, channels, 1, 1)
        self._scale = 1.0 / (pixel_unit(data.images) * std_t)
        self._shift = mean_t / std_t
        self._mean = tuple(mean)
        self._std = tuple(std)

    @property
    def num_batches(self) -> int:
        """Batches in a full epoch (ignores ``skip``)."""
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def __len__(self) -> int:
        return max(self.num_batches - self.skip, 0)

    def with_epoch(self, epoch: int, skip: int = 0) -> "Loader":
        """The same loader for another epoch (no data copied)."""
        return Loader(self.data, self._mean, self._std, self.batch_size, self.shuffle, self.augment,
                      self.hflip, self.crop_padding, self.seed, epoch, skip, self.drop_last, self.part)

    def shard(self, rank: int, world: int) -> "Loader":
        """The same loader yielding only process ``rank``'s share of every batch (of ``world`` processes)."""
        return Loader(self.data, self._mean, self._std, self.batch_size, self.shuffle, self.augment,
                      self.hflip, self.crop_padding, self.seed, self.epoch, self.skip, self.drop_last, (rank, world))

    def batch_rows(self, index: int) -> int:
        """Samples in the whole batch ``index`` (all processes' shares together)."""
        return min((index + 1) * self.batch_size, len(self.data)) - index * self.batch_size

    def order(self) -> torch.Tensor | None:
        """The epoch's sample order, or None for the stored order."""
        if not self.shuffle:
            return None
        g = _generator(self.seed, self.epoch, 0, _STREAM_PERMUTATION)
        return torch.randperm(len(self.data), generator=g)

    def batch(self, index: int, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index`` of this epoch (random access)."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        if order is None and self.shuffle:
            order = self.order()
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, len(self.data))
        total, (rank, world) = hi - lo, self.part
        rows = slice(total * rank // world, total * (rank + 1) // world) if world > 1 else None
        mine = slice(lo + rows.start, lo + rows.stop) if rows is not None else slice(lo, hi)
        if order is None:
            images, labels = self.data.images[mine], self.data.labels[mine]
        else:
            idx = order[mine]
            images, labels = self.data.images[idx], self.data.labels[idx]
        if self.augment and (self.crop_padding > 0 or self.hflip):
            g = _generator(self.seed, self.epoch, index, _STREAM_AUGMENT)
            if self.crop_padding > 0:
                images = _random_crop(images, self.crop_padding, g, rows, total)
            if self.hflip:
                images = _random_hflip(images, g, rows, total)
        return _normalize(images, self._scale, self._shift), labels.clone()

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches ``start_batch, start_batch + 1, ...`` (absolute indices, ``skip`` not applied)."""
        order = self.order()
        for b in range(max(int(start_batch), 0), self.num_batches):
            yield self.batch(b, order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(self.skip)

    def __repr__(self) -> str:
        return (f"Loader(n={len(self.data)}, batch_size={self.batch_size}, batches={self.num_batches}, "
                f"shuffle={self.shuffle}, augment={self.augment}, seed={self.seed}, epoch={self.epoch}, skip={self.skip}"
                + (f", part={self.part}" if self.part[1] > 1 else "") + ")")


# --------------------------------------------------------------------------------------------
# DataBundle
# --------------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    """A data set: train/test :class:`ImageSet` plus what a model and a trainer need to know about it."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    hflip: bool
    crop_padding: int
    source: str
    _subsets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = (self.in_channels, *self.image_size)
        for split_name, split in (("train", self.train), ("test", self.test)):
            if tuple(split.images.shape[1:]) != shape:
                raise DataError(
                    f"{self.name} {split_name} images have shape {tuple(split.images.shape[1:])}, expected {shape}; "
                    "all images of a data set must share one channel count and size."
                )
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= self.num_classes):
                raise DataError(
                    f"{self.name} {split_name} labels fall outside 0..{self.num_classes - 1}; "
                    "check the label files of this data set."
                )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(f"{self.name}: mean/std need {self.in_channels} values (one per channel).")
        if len(self.test) and self.train.images.dtype != self.test.images.dtype:
            raise DataError(f"{self.name}: the train images are {self.train.images.dtype} but the test images are "
                            f"{self.test.images.dtype}; give both splits in the same form (uint8 pixels or floats).")
        self._scale = 1.0 / (pixel_unit(self.train.images) * torch.tensor(self.std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self._shift = torch.tensor(self.mean, dtype=torch.float32).reshape(1, -1, 1, 1) / torch.tensor(
            self.std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def split(self, name: str) -> ImageSet:
        """The ImageSet for ``"train"`` or ``"test"``."""
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        raise DataError(f"unknown split {name!r} of data set {self.name}; use 'train' or 'test'.")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / unit - mean) / std`` for stored images N×C×H×W (or C×H×W); unit: :func:`pixel_unit`."""
        if images.dim() == 3:
            return _normalize(images.unsqueeze(0), self._scale, self._shift)[0]
        return _normalize(images, self._scale, self._shift)

    def _limited(self, split: str, limit: int | None) -> ImageSet:
        data = self.split(split)
        if limit is None:
            return data
        key = (split, int(limit))
        if key not in self._subsets:
            self._subsets[key] = data.subset(int(limit), seed=0)
        return self._subsets[key]

    def loader(
        self,
        split: str = "train",
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        limit: int | None = None,
        epoch: int = 0,
        skip: int = 0,
        drop_last: bool = False,
    ) -> Loader:
        """Batches of one split; ``limit`` uses ``split.subset(limit, seed=0)``; augmentation = random crop
        with ``crop_padding`` zero padding, plus horizontal flip when ``hflip``."""
        return Loader(
            self._limited(split, limit), self.mean, self.std, batch_size=batch_size, shuffle=shuffle,
            augment=augment, hflip=self.hflip, crop_padding=self.crop_padding, seed=seed, epoch=epoch,
            skip=skip, drop_last=drop_last,
        )

    def calibration_indices(self, n: int | Sequence[int], seed: int = 0) -> torch.Tensor:
        """Training-split indices of the calibration images: a deterministic stratified subset of ``n``
        (nested in ``n``, as :meth:`ImageSet.subset`), or the given indices, checked."""
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            if n < 1:
                raise ConfigError(f"calibration must be at least 1 image, got {n}.")
            if n >= len(self.train):
                return torch.arange(len(self.train))
            return torch.from_numpy(_stratified_indices(self.train.labels.numpy(), int(n), seed))
        idx = torch.as_tensor(list(n), dtype=torch.int64)
        if idx.numel() == 0:
            raise ConfigError("calibration is an empty list of indices; pass at least one training-image index.")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self.train):
            raise ConfigError(f"calibration indices must lie in 0..{len(self.train) - 1} (the training split of "
                              f"{self.name}), got {int(idx.min())}..{int(idx.max())}.")
        return idx

    def calibration(self, n: int | Sequence[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized training images and their labels at :meth:`calibration_indices` ``(n, seed)``."""
        idx = self.calibration_indices(n, seed)
        return self.normalize(self.train.images[idx]), self.train.labels[idx].clone()

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape (batch, C, H, W), float32."""
        return torch.zeros(batch, self.in_channels, *self.image_size, dtype=torch.float32)

    def summary(self) -> str:
        """One line: name, sizes, shape and source."""
        h, w = self.image_size
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test, {self.in_channels}×{h}×{w}, "
                f"{self.num_classes} classes ({self.source})")


def one_class_warning(data: DataBundle) -> str | None:
    """A sentence when the training labels hold fewer than two classes (a classifier learns nothing), else None."""
    present = torch.unique(data.train.labels).numel() if len(data.train) else 0
    if present >= 2:
        return None
    return (f"the training split of {data.name} holds {present} class{'es' if present != 1 else ''} "
            f"({data.num_classes} declared); a classifier needs at least two, so any accuracy on it is meaningless — "
            "check the labels (or the class sub-folders).")


def make_bundle(
    name: str,
    train_images: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_images: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    classes: Sequence[str],
    hflip: bool,
    crop_padding: int,
    source: str,
) -> DataBundle:
    """Build a DataBundle; mean/std come from the train images."""
    train = ImageSet(train_images, train_labels)
    test = ImageSet(test_images, test_labels)
    if len(train) == 0:
        raise DataError(f"data set {name} has no training images; check its files ({source}).")
    mean, std = channel_stats(train.images)
    _, c, h, w = train.images.shape
    bundle = DataBundle(
        name=name, train=train, test=test, num_classes=len(classes), in_channels=int(c), image_size=(int(h), int(w)),
        mean=mean, std=std, classes=list(classes), hflip=bool(hflip), crop_padding=int(crop_padding), source=source,
    )
    message = one_class_warning(bundle)
    if message:
        warnings.warn(message, stacklevel=2)
    return bundle


# --------------------------------------------------------------------------------------------
# npz cache
# --------------------------------------------------------------------------------------------

_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz_cache(path: Path, meta: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` exists and was written with the same ``meta``; else None.

    A cache that cannot be read is reported with a warning and treated as absent (it will be rebuilt).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz["meta"]))
            if stored != meta:
                return None
            arrays = {k: npz[k] for k in _CACHE_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        warnings.warn(f"cache file {path} is unreadable ({exc}); rebuilding it.", stacklevel=3)
        return None
    return arrays


def save_npz_cache(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays and ``meta`` to a compressed npz, atomically."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **{k: arrays[k] for k in _CACHE_KEYS})
    except OSError as exc:
        raise DataError(
            f"cannot write the data cache {path} ({exc.strerror or exc}); set CHANPRUNE_CACHE to a writable folder."
        ) from exc


def cached_arrays(path: Path, meta: dict, build: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays from the cache at ``path``, or from ``build()`` (then cached). Returns (arrays, from_cache)."""
    arrays = load_npz_cache(path, meta)
    if arrays is not None:
        return arrays, True
    arrays = build()
    save_npz_cache(path, meta, arrays)
    return arrays, False
