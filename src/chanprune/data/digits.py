"""scikit-learn's 8×8 digits (1,797 images, 1×8×8); pixel values 0..16 are scaled to 0..255.

Split per class with ``numpy.random.default_rng(0)``, ``round(0.2 n_c)`` to test: 1,438 / 359.
Needs no download; used by the fastest tests.
"""
from __future__ import annotations

import os

import numpy as np

from .base import DataBundle, make_bundle, stratified_split
from .registry import register_dataset

__all__ = ["build_digits"]

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@register_dataset("digits")
def build_digits(root: str | os.PathLike | None = None, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> DataBundle:
    """The digits bundled with scikit-learn (``root`` is ignored)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.rint(np.asarray(raw.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = np.asarray(raw.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    source = (f"scikit-learn load_digits (8×8, 0..16 scaled to 0..255), stratified split seed {seed}: "
              f"{train_idx.size} train / {test_idx.size} test")
    return make_bundle("digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                       classes=[str(d) for d in range(10)], hflip=False, crop_padding=1, source=source)
