"""CIFAR-10 from the official python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

The batches are pickles; they are read with an Unpickler that only resolves the few numpy globals
an array needs, so a tampered file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from chanprune.errors import DataError

from .base import DataBundle, make_bundle
from .registry import register_dataset

__all__ = ["CLASSES", "SafeUnpickler", "safe_load_pickle", "build_cifar10"]

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
_HOW_TO_GET = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it and pass "
               "root= the cifar-10-batches-py folder")

# (module, name) pairs a pickled numpy array may reference; numpy.core.* is numpy._core.* in numpy 2.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol < 3
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction globals; anything else -> DataError."""

    def __init__(self, file, path: Path, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise DataError(
                f"{self._path} references {module}.{name}, which a CIFAR-10 batch never contains; the file is not a "
                f"genuine CIFAR-10 batch, so it was not loaded ({_HOW_TO_GET})."
            )
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def safe_load_pickle(path: str | os.PathLike):
    """Load a pickle restricted to plain containers, bytes/str/numbers and numpy arrays."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {_HOW_TO_GET}.") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check its permissions.") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), path, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # any unpickling failure of a corrupt file
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); {_HOW_TO_GET}.") from None


def _get(d: dict, key: str):
    return d[key.encode()] if key.encode() in d else d.get(key)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a dict; it is not a CIFAR-10 python batch ({_HOW_TO_GET}).")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise DataError(f"{path} lacks the 'data' or 'labels' entry; it is not a CIFAR-10 python batch ({_HOW_TO_GET}).")
    data = np.asarray(data)
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (ValueError, TypeError):
        raise DataError(f"{path} has non-integer labels; it is not a CIFAR-10 python batch ({_HOW_TO_GET}).") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} holds {data.dtype} data of shape {data.shape}, expected uint8 N×3072; {_HOW_TO_GET}.")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path} has {labels.size} labels for {data.shape[0]} images or labels outside 0..9; {_HOW_TO_GET}.")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path) -> list[str]:
    path = folder / META_FILE
    if not path.is_file():
        return list(CLASSES)
    meta = safe_load_pickle(path)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path} lacks a list of 10 label_names; {_HOW_TO_GET}.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@register_dataset("cifar10")
def build_cifar10(root: str | os.PathLike | None = None) -> DataBundle:
    """CIFAR-10 (3×32×32, official 50,000 / 10,000 split) from ``root`` or ``root/cifar-10-batches-py``."""
    if root is None:
        raise DataError(f"cifar10 needs root=; {_HOW_TO_GET}.")
    folder = Path(root).expanduser()
    if not (folder / TEST_FILE).exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist; {_HOW_TO_GET}.")
    for name in TRAIN_FILES + [TEST_FILE]:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name} is missing; {_HOW_TO_GET}.")
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = _read_batch(folder / TEST_FILE)
    train_images = np.concatenate([b[0] for b in train])
    train_labels = np.concatenate([b[1] for b in train])
    return make_bundle("cifar10", train_images, train_labels, test_images, test_labels, classes=_class_names(folder),
                       hflip=True, crop_padding=4, source=f"CIFAR-10 python batches in {folder} (official split)")
