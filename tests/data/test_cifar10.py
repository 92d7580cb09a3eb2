import pickle

import numpy as np
import pytest
import torch

from chanprune.data import load_data
from chanprune.data.cifar10 import CLASSES, safe_load_pickle
from chanprune.errors import DataError


def _batch(n, seed, protocol):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def _write_cifar(folder, n=6, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = _batch(n, k, protocol)
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh, protocol=protocol)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, fh, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_from_batches(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    b = load_data("cifar10", root=tmp_path)  # finds the cifar-10-batches-py sub-folder
    assert b.train.images.shape == (30, 3, 32, 32) and b.test.images.shape == (6, 3, 32, 32)
    assert b.in_channels == 3 and b.image_size == (32, 32) and b.hflip is True and b.crop_padding == 4
    assert b.classes == CLASSES and len(b.mean) == 3
    first = batches["data_batch_1"]
    assert torch.equal(b.train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert b.train.labels[:6].tolist() == first[b"labels"]


def test_cifar10_needs_root():
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_data("cifar10")


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_data("cifar10", root=tmp_path)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_MARKER",))


def test_malicious_pickle_refused(tmp_path, monkeypatch):
    _write_cifar(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil()}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_2.*(posix|os|nt)\.system"):
        load_data("cifar10", root=tmp_path)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_corrupt_and_wrong_content(tmp_path):
    _write_cifar(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch.*corrupt"):
        load_data("cifar10", root=tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="test_batch.*3072"):
        load_data("cifar10", root=tmp_path)


def test_safe_load_refuses_builtins_eval(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="builtins.eval"):
        safe_load_pickle(p)
